-- KPI views, PostgreSQL dialect: a line-by-line port of duckdb_views.sql (same views, same
-- columns, same order, same results; tests/test_warehouse_views.py compares them). The whole
-- file runs in one transaction; every view is dropped (CASCADE) and created again, so a view
-- whose columns changed is replaced too. Porting a DuckDB view:
--   GROUP BY ALL                    -> GROUP BY the listed columns (or ordinals)
--   x / y on integers              -> x::float8 / y (PostgreSQL divides integers exactly)
--   epoch_ms(t)                     -> cx360_epoch_ms(t)
--   time_bucket(to_seconds(s), t, TIMESTAMP '1970-01-01') -> cx360_bucket(t, s)
--   quantile_cont(x, q)             -> percentile_cont(q) WITHIN GROUP (ORDER BY x)
--   first(x ORDER BY o)             -> (array_agg(x ORDER BY o))[1]
--   list(...), len(l)               -> array_agg(...), cardinality(l)
--   regexp_matches(s, re)           -> s ~ re;  INTERVAL 30 MINUTE -> INTERVAL '30 minutes'
--   any_value(x)                    -> max(x) (one value per group there)
--   MACROs                          -> SQL functions (cx360_*), created below
--   ORDER BY text                   -> ORDER BY text COLLATE "C" (byte order, as DuckDB)
-- Sessions run with TimeZone=UTC, so TIMESTAMPTZ buckets are UTC buckets as in DuckDB.

CREATE OR REPLACE FUNCTION cx360_epoch_ms(t timestamptz) RETURNS double precision
    LANGUAGE sql IMMUTABLE AS $$ SELECT floor(extract(epoch FROM t) * 1000) $$;

CREATE OR REPLACE FUNCTION cx360_bucket(t timestamptz, seconds bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM t) / seconds) * seconds) $$;

CREATE OR REPLACE FUNCTION cx360_implicit_key(identifier text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN identifier LIKE 'acct:%' THEN substr(identifier, 6)
                ELSE 'K' || left(encode(sha256(convert_to(identifier, 'UTF8')), 'hex'), 16) END $$;

CREATE OR REPLACE FUNCTION cx360_journey_phase(orders bigint, promoter boolean,
                                               positive_voice boolean, considered boolean,
                                               engaged boolean) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN orders >= 2 OR (orders >= 1 AND (promoter OR positive_voice)) THEN 'loyalty'
                WHEN orders >= 1 THEN 'purchase'
                WHEN considered THEN 'consideration'
                WHEN engaged THEN 'favorability'
                ELSE 'awareness' END $$;

DROP VIEW IF EXISTS _cx360_window_sizes CASCADE;
CREATE VIEW _cx360_window_sizes AS
SELECT DISTINCT window_seconds FROM event_counts;

DROP VIEW IF EXISTS kpi_social CASCADE;
CREATE VIEW kpi_social AS
SELECT window_start, window_end, window_seconds, brand, platform, language,
       mentions, ugc_posts, inbound, scored, positive, neutral, negative,
       polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       brand_posts, brand_replies, brand_post_reach, likes, shares, comments,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM social_kpis;

DROP VIEW IF EXISTS kpi_social_brand CASCADE;
CREATE VIEW kpi_social_brand AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand,
           sum(mentions) AS mentions, sum(ugc_posts) AS ugc_posts, sum(inbound) AS inbound,
           sum(scored) AS scored, sum(positive) AS positive, sum(neutral) AS neutral,
           sum(negative) AS negative, sum(polarity_sum) AS polarity_sum,
           sum(brand_posts) AS brand_posts, sum(brand_replies) AS brand_replies,
           sum(brand_post_reach) AS brand_post_reach, sum(likes) AS likes,
           sum(shares) AS shares, sum(comments) AS comments
    FROM social_kpis GROUP BY window_start, window_end, window_seconds, brand)
SELECT *, polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM s;

DROP VIEW IF EXISTS kpi_share_of_voice CASCADE;
CREATE VIEW kpi_share_of_voice AS
WITH v AS (
    SELECT window_start, window_end, window_seconds, brand,
           sum(mentions) AS mentions, sum(reach) AS reach
    FROM share_of_voice_counts GROUP BY window_start, window_end, window_seconds, brand),
j AS (
    SELECT v.*, coalesce(b.industry, '(none)') AS industry, coalesce(b.own, false) AS own
    FROM v LEFT JOIN brands b USING (brand))
SELECT *,
       100.0 * mentions / sum(mentions) OVER w AS share_of_voice_pct,
       100.0 * reach / NULLIF(sum(reach) OVER w, 0) AS reach_share_of_voice_pct
FROM j
WINDOW w AS (PARTITION BY window_seconds, window_start, industry);

DROP VIEW IF EXISTS brand_response_facts CASCADE;
CREATE VIEW brand_response_facts AS
SELECT i.*, r.first_reply_time,
       CASE WHEN r.first_reply_time IS NOT NULL THEN
           greatest(cx360_epoch_ms(r.first_reply_time) - cx360_epoch_ms(i.inbound_time), 0)
               / 60000.0
       END AS response_minutes
FROM inbound_posts i
LEFT JOIN (SELECT platform, parent_post_id, min(reply_time) AS first_reply_time
           FROM brand_replies GROUP BY platform, parent_post_id) r
       ON r.platform = i.platform AND r.parent_post_id = i.post_id;

DROP VIEW IF EXISTS kpi_response CASCADE;
CREATE VIEW kpi_response AS
SELECT cx360_bucket(f.inbound_time, w.window_seconds) AS window_start,
       cx360_bucket(f.inbound_time, w.window_seconds) + w.window_seconds * INTERVAL '1 second'
           AS window_end,
       w.window_seconds, f.brand, f.platform,
       count(*) AS inbound,
       count(f.first_reply_time) AS replied,
       100.0 * count(f.first_reply_time) / count(*) AS response_rate_pct,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY f.response_minutes)
           AS median_response_minutes,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY f.response_minutes) AS p90_response_minutes,
       avg(f.response_minutes) AS mean_response_minutes,
       100.0 * count(*) FILTER (WHERE f.response_minutes <= 60) / count(*)
           AS answered_within_1h_pct,
       count(*) FILTER (WHERE f.label = 'negative') AS complaints,
       count(*) FILTER (WHERE f.label = 'negative' AND f.first_reply_time IS NULL)
           AS unanswered_complaints
FROM brand_response_facts f CROSS JOIN _cx360_window_sizes w
GROUP BY 1, 2, 3, 4, 5;

DROP VIEW IF EXISTS web_sessions CASCADE;
CREATE VIEW web_sessions AS
WITH ordered AS (
    SELECT *, lag(event_time) OVER (PARTITION BY brand, cookie_id
                                    ORDER BY event_time, event_id COLLATE "C") AS prev_time
    FROM web_events),
marked AS (
    SELECT *, CASE WHEN prev_time IS NULL OR event_time - prev_time > INTERVAL '30 minutes'
                   THEN 1 ELSE 0 END AS starts
    FROM ordered),
numbered AS (
    SELECT *, sum(starts) OVER (PARTITION BY brand, cookie_id ORDER BY event_time, event_id COLLATE "C"
                                ROWS UNBOUNDED PRECEDING) AS session_no
    FROM marked)
SELECT brand, cookie_id, session_no,
       min(event_time) AS session_start, max(event_time) AS session_end,
       count(*) AS events,
       count(*) FILTER (WHERE event_type IN ('page_view', 'product_view')) AS page_views,
       bool_or(event_type = 'product_view') AS viewed_product,
       bool_or(event_type = 'add_to_cart') AS added_to_cart,
       bool_or(event_type = 'order') AS converted,
       count(DISTINCT order_id) AS orders,
       coalesce(sum(order_value), 0) AS revenue,
       (array_agg(referrer ORDER BY event_time, event_id COLLATE "C"))[1] AS landing_referrer,
       (array_agg(utm_source ORDER BY event_time, event_id COLLATE "C"))[1] AS utm_source,
       (array_agg(utm_medium ORDER BY event_time, event_id COLLATE "C"))[1] AS utm_medium,
       (array_agg(utm_campaign ORDER BY event_time, event_id COLLATE "C"))[1] AS utm_campaign,
       (array_agg(device ORDER BY event_time, event_id COLLATE "C"))[1] AS device,
       max(account_id) AS account_id
FROM numbered GROUP BY brand, cookie_id, session_no;

DROP VIEW IF EXISTS web_sessions_enriched CASCADE;
CREATE VIEW web_sessions_enriched AS
SELECT *,
       coalesce(utm_medium IN ('social', 'paid_social'), false)
         OR coalesce(landing_referrer ~
              '(^|\.)(instagram\.com|facebook\.com|x\.com|t\.co|twitter\.com|tiktok\.com|youtube\.com|linkedin\.com|pinterest\.com)$',
            false) AS social_referred,
       page_views <= 1 AND NOT added_to_cart AND NOT converted AS bounced
FROM web_sessions;

DROP VIEW IF EXISTS kpi_web CASCADE;
CREATE VIEW kpi_web AS
SELECT cx360_bucket(s.session_start, w.window_seconds) AS window_start,
       cx360_bucket(s.session_start, w.window_seconds) + w.window_seconds * INTERVAL '1 second'
           AS window_end,
       w.window_seconds, s.brand, coalesce(s.utm_source, '(direct)') AS utm_source,
       coalesce(s.utm_campaign, '(none)') AS utm_campaign,
       count(*) AS sessions,
       count(*) FILTER (WHERE s.converted) AS converted_sessions,
       100.0 * count(*) FILTER (WHERE s.converted) / count(*) AS conversion_rate_pct,
       count(*) FILTER (WHERE s.bounced) AS bounced_sessions,
       100.0 * count(*) FILTER (WHERE s.bounced) / count(*) AS bounce_rate_pct,
       sum(s.orders) AS orders, sum(s.revenue) AS revenue,
       count(*) FILTER (WHERE s.social_referred) AS social_referred_sessions,
       count(*) FILTER (WHERE s.social_referred AND s.converted) AS social_referred_conversions
FROM web_sessions_enriched s CROSS JOIN _cx360_window_sizes w
GROUP BY 1, 2, 3, 4, 5, 6;

DROP VIEW IF EXISTS kpi_funnel CASCADE;
CREATE VIEW kpi_funnel AS
SELECT cx360_bucket(s.session_start, w.window_seconds) AS window_start,
       w.window_seconds, s.brand, coalesce(s.utm_source, '(direct)') AS utm_source,
       coalesce(s.utm_campaign, '(none)') AS utm_campaign,
       count(*) AS sessions,
       count(*) FILTER (WHERE s.viewed_product) AS viewed_product,
       count(*) FILTER (WHERE s.added_to_cart) AS added_to_cart,
       count(*) FILTER (WHERE s.converted) AS ordered
FROM web_sessions_enriched s CROSS JOIN _cx360_window_sizes w
GROUP BY 1, 2, 3, 4, 5;

DROP VIEW IF EXISTS kpi_survey CASCADE;
CREATE VIEW kpi_survey AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand, survey_type,
           sum(responses) AS responses, sum(score_sum) AS score_sum,
           sum(promoters) AS promoters, sum(passives) AS passives,
           sum(detractors) AS detractors, sum(top2) AS top2, sum(agree) AS agree,
           sum(comments) AS comments, sum(comment_positive) AS comment_positive,
           sum(comment_negative) AS comment_negative,
           sum(comment_polarity_sum) AS comment_polarity_sum
    FROM survey_kpis GROUP BY window_start, window_end, window_seconds, brand, survey_type)
SELECT *,
       CASE WHEN survey_type = 'NPS' THEN 100.0 * (promoters - detractors) / responses END AS nps,
       CASE WHEN survey_type = 'CSAT' THEN 100.0 * top2 / responses END AS csat_top2_pct,
       CASE WHEN survey_type = 'CSAT' THEN score_sum::float8 / responses END AS csat_mean,
       CASE WHEN survey_type = 'CES' THEN score_sum::float8 / responses END AS ces_mean,
       CASE WHEN survey_type = 'CES' THEN 100.0 * agree / responses END AS ces_agree_pct,
       comment_polarity_sum / NULLIF(comments, 0) AS comment_sentiment_mean
FROM s;

-- Sliding windows (`cx360 run --sliding`): see duckdb_views.sql.
DROP VIEW IF EXISTS kpi_social_sliding CASCADE;
CREATE VIEW kpi_social_sliding AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, window_period_seconds, brand,
           sum(mentions) AS mentions, sum(ugc_posts) AS ugc_posts, sum(inbound) AS inbound,
           sum(scored) AS scored, sum(positive) AS positive, sum(neutral) AS neutral,
           sum(negative) AS negative, sum(polarity_sum) AS polarity_sum,
           sum(brand_posts) AS brand_posts, sum(brand_replies) AS brand_replies,
           sum(brand_post_reach) AS brand_post_reach, sum(likes) AS likes,
           sum(shares) AS shares, sum(comments) AS comments
    FROM social_kpis_sliding
    GROUP BY window_start, window_end, window_seconds, window_period_seconds, brand)
SELECT *, polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM s;

DROP VIEW IF EXISTS kpi_survey_sliding CASCADE;
CREATE VIEW kpi_survey_sliding AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, window_period_seconds, brand, survey_type,
           sum(responses) AS responses, sum(score_sum) AS score_sum,
           sum(promoters) AS promoters, sum(passives) AS passives,
           sum(detractors) AS detractors, sum(top2) AS top2, sum(agree) AS agree,
           sum(comments) AS comments, sum(comment_positive) AS comment_positive,
           sum(comment_negative) AS comment_negative,
           sum(comment_polarity_sum) AS comment_polarity_sum
    FROM survey_kpis_sliding
    GROUP BY window_start, window_end, window_seconds, window_period_seconds, brand,
             survey_type)
SELECT *,
       CASE WHEN survey_type = 'NPS' THEN 100.0 * (promoters - detractors) / responses END AS nps,
       CASE WHEN survey_type = 'CSAT' THEN 100.0 * top2 / responses END AS csat_top2_pct,
       CASE WHEN survey_type = 'CSAT' THEN score_sum::float8 / responses END AS csat_mean,
       CASE WHEN survey_type = 'CES' THEN score_sum::float8 / responses END AS ces_mean,
       CASE WHEN survey_type = 'CES' THEN 100.0 * agree / responses END AS ces_agree_pct,
       comment_polarity_sum / NULLIF(comments, 0) AS comment_sentiment_mean
FROM s;

DROP VIEW IF EXISTS kpi_aspects CASCADE;
CREATE VIEW kpi_aspects AS
SELECT window_start, window_end, window_seconds, source, brand, aspect,
       sum(mentions) AS mentions,
       sum(mentions) FILTER (WHERE label = 'negative') AS negative,
       sum(mentions) FILTER (WHERE label = 'positive') AS positive,
       100.0 * coalesce(sum(mentions) FILTER (WHERE label = 'negative'), 0) / sum(mentions)
           AS negative_share_pct
FROM aspect_mentions GROUP BY window_start, window_end, window_seconds, source, brand, aspect;

-- Customer 360 (docs/identity.md): see duckdb_views.sql for the rules.
DROP VIEW IF EXISTS customer_touchpoints_keyed CASCADE;
CREATE VIEW customer_touchpoints_keyed AS
SELECT t.*, coalesce(m.customer_key, cx360_implicit_key(t.identifier)) AS customer_key
FROM customer_touchpoints t LEFT JOIN identity_map m USING (identifier);

-- What each touchpoint proves about the journey, per brand and '(all)' (see duckdb_views.sql).
DROP VIEW IF EXISTS customer_touchpoint_evidence CASCADE;
CREATE VIEW customer_touchpoint_evidence AS
WITH t AS (
    SELECT customer_key, brand, event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM customer_touchpoints_keyed
    UNION ALL
    SELECT customer_key, '(all)', event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM customer_touchpoints_keyed)
SELECT customer_key, brand, event_id, event_time, order_id,
       CASE WHEN survey_type = 'NPS' THEN score END AS nps_score,
       coalesce(channel = 'social' AND label = 'positive' AND touchpoint NOT LIKE '%:reply',
                false) AS positive_voice,
       coalesce(touchpoint IN ('web:product_view', 'web:add_to_cart')
                OR (channel = 'social' AND aimed_at_brand), false) AS considered,
       coalesce(touchpoint LIKE '%:like' OR touchpoint LIKE '%:comment'
                OR touchpoint LIKE '%:share' OR label = 'positive'
                OR touchpoint = 'web:account_link', false) AS engaged
FROM t;

DROP VIEW IF EXISTS customer_journey_evidence CASCADE;
CREATE VIEW customer_journey_evidence AS
WITH t AS (
    SELECT customer_key, brand, event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM customer_touchpoints_keyed
    UNION ALL
    SELECT customer_key, '(all)', event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM customer_touchpoints_keyed)
SELECT customer_key, brand,
       count(DISTINCT order_id) AS orders,
       coalesce((array_agg(score ORDER BY event_time DESC, event_id COLLATE "C" DESC)
                 FILTER (WHERE survey_type = 'NPS'))[1] >= 9, false) AS promoter,
       coalesce(bool_or(channel = 'social' AND label = 'positive'
                        AND touchpoint NOT LIKE '%:reply'), false) AS positive_voice,
       coalesce(bool_or(touchpoint IN ('web:product_view', 'web:add_to_cart')
                        OR (channel = 'social' AND aimed_at_brand)), false) AS considered,
       coalesce(bool_or(touchpoint LIKE '%:like' OR touchpoint LIKE '%:comment'
                        OR touchpoint LIKE '%:share' OR label = 'positive'
                        OR touchpoint = 'web:account_link'), false) AS engaged
FROM t GROUP BY customer_key, brand;

DROP VIEW IF EXISTS customer_journey CASCADE;
CREATE VIEW customer_journey AS
SELECT customer_key, brand, orders,
       cx360_journey_phase(orders, promoter, positive_voice, considered, engaged)
           AS journey_phase
FROM customer_journey_evidence;

DROP VIEW IF EXISTS kpi_journey CASCADE;
CREATE VIEW kpi_journey AS
SELECT brand, journey_phase,
       CASE journey_phase WHEN 'awareness' THEN 1 WHEN 'favorability' THEN 2
            WHEN 'consideration' THEN 3 WHEN 'purchase' THEN 4 ELSE 5 END AS phase_no,
       count(*) AS customers,
       100.0 * count(*) / sum(count(*)) OVER (PARTITION BY brand) AS customers_pct
FROM customer_journey GROUP BY brand, journey_phase;

-- Phase per customer as of every window end with a touchpoint (see duckdb_views.sql).
DROP VIEW IF EXISTS customer_journey_steps CASCADE;
CREATE VIEW customer_journey_steps AS
WITH e AS (
    SELECT ev.*, w.window_seconds, cx360_bucket(ev.event_time, w.window_seconds) AS window_start
    FROM customer_touchpoint_evidence ev CROSS JOIN _cx360_window_sizes w),
new_orders AS (
    SELECT customer_key, brand, window_seconds, window_start, count(*) AS new_orders
    FROM (SELECT customer_key, brand, window_seconds, order_id, min(window_start) AS window_start
          FROM e WHERE order_id IS NOT NULL GROUP BY customer_key, brand, window_seconds, order_id
         ) o
    GROUP BY customer_key, brand, window_seconds, window_start),
per_window AS (
    SELECT customer_key, brand, window_seconds, window_start,
           (array_agg(nps_score ORDER BY event_time DESC, event_id COLLATE "C" DESC)
               FILTER (WHERE nps_score IS NOT NULL))[1] AS last_nps,
           max(CASE WHEN positive_voice THEN 1 ELSE 0 END) AS positive_voice,
           max(CASE WHEN considered THEN 1 ELSE 0 END) AS considered,
           max(CASE WHEN engaged THEN 1 ELSE 0 END) AS engaged
    FROM e GROUP BY customer_key, brand, window_seconds, window_start),
running AS (
    SELECT p.customer_key, p.brand, p.window_seconds, p.window_start, p.last_nps,
           sum(coalesce(o.new_orders, 0)) OVER c AS orders,
           max(p.positive_voice) OVER c AS positive_voice,
           max(p.considered) OVER c AS considered,
           max(p.engaged) OVER c AS engaged,
           count(p.last_nps) OVER c AS nps_answers
    FROM per_window p
    LEFT JOIN new_orders o USING (customer_key, brand, window_seconds, window_start)
    WINDOW c AS (PARTITION BY p.customer_key, p.brand, p.window_seconds ORDER BY p.window_start
                 ROWS UNBOUNDED PRECEDING)),
latest_nps AS (
    SELECT *, first_value(last_nps) OVER (
                  PARTITION BY customer_key, brand, window_seconds, nps_answers
                  ORDER BY window_start ROWS UNBOUNDED PRECEDING) AS nps_latest
    FROM running),
phased AS (
    SELECT customer_key, brand, window_seconds, window_start, orders::bigint AS orders,
           cx360_journey_phase(orders::bigint, coalesce(nps_latest >= 9, false),
                               positive_voice = 1, considered = 1, engaged = 1) AS to_phase
    FROM latest_nps)
SELECT customer_key, brand, window_seconds, window_start,
       window_start + window_seconds * INTERVAL '1 second' AS window_end, orders,
       lag(to_phase) OVER (PARTITION BY customer_key, brand, window_seconds
                           ORDER BY window_start) AS from_phase,
       to_phase
FROM phased;

DROP VIEW IF EXISTS kpi_journey_transitions CASCADE;
CREATE VIEW kpi_journey_transitions AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand,
           coalesce(from_phase, '(new)') AS from_phase, to_phase,
           CASE from_phase WHEN 'awareness' THEN 1 WHEN 'favorability' THEN 2
                WHEN 'consideration' THEN 3 WHEN 'purchase' THEN 4 WHEN 'loyalty' THEN 5
                ELSE 0 END AS from_phase_no,
           CASE to_phase WHEN 'awareness' THEN 1 WHEN 'favorability' THEN 2
                WHEN 'consideration' THEN 3 WHEN 'purchase' THEN 4 ELSE 5 END AS to_phase_no
    FROM customer_journey_steps)
SELECT window_start, window_end, window_seconds, brand, from_phase, to_phase,
       from_phase_no, to_phase_no,
       CASE WHEN from_phase_no = 0 THEN 'new' WHEN to_phase_no = from_phase_no THEN 'same'
            WHEN to_phase_no > from_phase_no THEN 'forward' ELSE 'back' END AS direction,
       count(*) AS customers
FROM s
GROUP BY window_start, window_end, window_seconds, brand, from_phase, to_phase,
         from_phase_no, to_phase_no;

DROP VIEW IF EXISTS customer_360 CASCADE;
CREATE VIEW customer_360 AS
WITH t AS (SELECT * FROM customer_touchpoints_keyed),
as_of AS (SELECT max(event_time) AS as_of FROM customer_touchpoints),
ids AS (
    SELECT customer_key, array_agg(DISTINCT identifier COLLATE "C" ORDER BY identifier COLLATE "C") AS identifiers
    FROM (SELECT customer_key, identifier FROM identity_map
          UNION SELECT customer_key, identifier FROM t) u
    GROUP BY customer_key),
by_channel AS (
    SELECT customer_key, string_agg(channel || '=' || n, ', ' ORDER BY channel COLLATE "C") AS channels
    FROM (SELECT customer_key, channel, count(*) AS n FROM t GROUP BY 1, 2) c
    GROUP BY customer_key),
by_touchpoint AS (
    SELECT customer_key, string_agg(touchpoint || '=' || n, ', ' ORDER BY touchpoint COLLATE "C")
               AS touchpoints
    FROM (SELECT customer_key, touchpoint, count(*) AS n FROM t GROUP BY 1, 2) p
    GROUP BY customer_key),
complaints AS (
    SELECT t.customer_key, count(*) AS open_complaints
    FROM t JOIN brand_response_facts f USING (event_id)
    WHERE f.label = 'negative' AND f.first_reply_time IS NULL GROUP BY t.customer_key),
agg AS (
    SELECT t.customer_key,
           count(*) FILTER (WHERE channel = 'social') AS social_events,
           count(*) FILTER (WHERE channel = 'web') AS web_events,
           count(*) FILTER (WHERE channel = 'survey') AS survey_responses,
           min(event_time) AS first_seen, max(event_time) AS last_seen,
           count(DISTINCT order_id) AS orders,
           coalesce(sum(order_value) FILTER (WHERE touchpoint = 'web:order'), 0) AS revenue,
           (array_agg(score ORDER BY event_time DESC, event_id COLLATE "C" DESC)
               FILTER (WHERE survey_type = 'NPS'))[1] AS nps_latest,
           avg(score) FILTER (WHERE survey_type = 'NPS') AS nps_avg,
           (array_agg(score ORDER BY event_time DESC, event_id COLLATE "C" DESC)
               FILTER (WHERE survey_type = 'CSAT'))[1] AS csat_latest,
           avg(score) FILTER (WHERE survey_type = 'CSAT') AS csat_avg,
           (array_agg(score ORDER BY event_time DESC, event_id COLLATE "C" DESC)
               FILTER (WHERE survey_type = 'CES'))[1] AS ces_latest,
           avg(score) FILTER (WHERE survey_type = 'CES') AS ces_avg,
           avg(polarity) FILTER (WHERE event_time > a.as_of - INTERVAL '7 days')
               AS sentiment_last_7d,
           avg(polarity) FILTER (WHERE event_time <= a.as_of - INTERVAL '7 days')
               AS sentiment_before,
           max(a.as_of) AS as_of
    FROM t CROSS JOIN as_of a GROUP BY t.customer_key),
scored AS (
    SELECT agg.*, ids.identifiers, cardinality(ids.identifiers) AS identifier_count,
           c.channels, p.touchpoints, coalesce(o.open_complaints, 0) AS open_complaints,
           j.journey_phase,
           sentiment_last_7d - sentiment_before AS sentiment_trend,
           (cx360_epoch_ms(as_of) - cx360_epoch_ms(last_seen)) / 86400000.0
               AS days_since_last_seen,
           greatest((cx360_epoch_ms(as_of) - cx360_epoch_ms(first_seen)) / (30 * 86400000.0),
                    1.0) AS months_observed
    FROM agg JOIN ids USING (customer_key)
    LEFT JOIN by_channel c USING (customer_key)
    LEFT JOIN by_touchpoint p USING (customer_key)
    LEFT JOIN complaints o USING (customer_key)
    LEFT JOIN customer_journey j ON j.customer_key = agg.customer_key AND j.brand = '(all)'),
risk AS (
    SELECT *, round(least(1.0,
               0.5 * least(days_since_last_seen / 30.0, 1.0)
             + 0.2 * CASE WHEN nps_latest <= 6 THEN 1 ELSE 0 END
             + 0.15 * CASE WHEN open_complaints > 0 THEN 1 ELSE 0 END
             + 0.15 * CASE WHEN coalesce(sentiment_trend, 0) < 0 THEN 1 ELSE 0 END)::numeric, 3)
               ::float8 AS churn_risk
    FROM scored)
SELECT customer_key, identifiers, identifier_count, channels, touchpoints,
       social_events, web_events, survey_responses, first_seen, last_seen, journey_phase,
       orders, revenue, nps_latest, nps_avg, csat_latest, csat_avg, ces_latest, ces_avg,
       sentiment_last_7d, sentiment_before, sentiment_trend, open_complaints,
       days_since_last_seen, churn_risk,
       round(round((0.3 * revenue / months_observed * least(1 - churn_risk, 0.95)
             / (1 + 0.01 - least(1 - churn_risk, 0.95)))::numeric, 6), 2)::float8
           AS clv_estimate,
       as_of
FROM risk;

-- Churn-risk distribution per brand (see duckdb_views.sql for the bands).
DROP VIEW IF EXISTS kpi_churn_risk CASCADE;
CREATE VIEW kpi_churn_risk AS
WITH by_brand AS (
    SELECT DISTINCT customer_key, brand FROM customer_touchpoints_keyed
    UNION ALL
    SELECT customer_key, '(all)' FROM customer_360),
banded AS (
    SELECT b.brand, c.churn_risk::float8 AS churn_risk,
           CASE WHEN c.churn_risk < 0.25 THEN 1 WHEN c.churn_risk < 0.5 THEN 2
                WHEN c.churn_risk < 0.75 THEN 3 ELSE 4 END AS band_no
    FROM by_brand b JOIN customer_360 c USING (customer_key))
SELECT brand,
       CASE band_no WHEN 1 THEN 'low' WHEN 2 THEN 'medium' WHEN 3 THEN 'high'
            ELSE 'critical' END AS risk_band,
       band_no,
       CASE band_no WHEN 1 THEN 0.0 WHEN 2 THEN 0.25 WHEN 3 THEN 0.5 ELSE 0.75 END AS band_from,
       CASE band_no WHEN 1 THEN 0.25 WHEN 2 THEN 0.5 WHEN 3 THEN 0.75 ELSE 1.0 END AS band_to,
       count(*) AS customers,
       100.0 * count(*) / sum(count(*)) OVER (PARTITION BY brand) AS customers_pct,
       sum(churn_risk) AS churn_risk_sum,
       avg(churn_risk) AS mean_churn_risk,
       sum(sum(churn_risk)) OVER (PARTITION BY brand) / sum(count(*)) OVER (PARTITION BY brand)
           AS brand_mean_churn_risk
FROM banded GROUP BY brand, band_no;
