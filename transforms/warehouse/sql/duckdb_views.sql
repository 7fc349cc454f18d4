-- KPI views over the component and fact tables (DuckDB dialect). Ratios are computed here,
-- from summed components, never stored: components from any number of micro-batches add up
-- exactly. docs/kpis.md gives every formula. Window sizes are those the pipeline writes.

CREATE OR REPLACE VIEW _cx360_window_sizes AS
SELECT DISTINCT window_seconds FROM event_counts;

-- Social listening per brand, platform and language.
CREATE OR REPLACE VIEW kpi_social AS
SELECT window_start, window_end, window_seconds, brand, platform, language,
       mentions, ugc_posts, inbound, scored, positive, neutral, negative,
       polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       brand_posts, brand_replies, brand_post_reach, likes, shares, comments,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM social_kpis;

-- The same, rolled up per brand over platforms and languages (ratios of sums).
CREATE OR REPLACE VIEW kpi_social_brand AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand,
           sum(mentions) AS mentions, sum(ugc_posts) AS ugc_posts, sum(inbound) AS inbound,
           sum(scored) AS scored, sum(positive) AS positive, sum(neutral) AS neutral,
           sum(negative) AS negative, sum(polarity_sum) AS polarity_sum,
           sum(brand_posts) AS brand_posts, sum(brand_replies) AS brand_replies,
           sum(brand_post_reach) AS brand_post_reach, sum(likes) AS likes,
           sum(shares) AS shares, sum(comments) AS comments
    FROM social_kpis GROUP BY ALL)
SELECT *, polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM s;

-- Share of voice within each competitive set (brands.industry).
CREATE OR REPLACE VIEW kpi_share_of_voice AS
WITH v AS (
    SELECT window_start, window_end, window_seconds, brand,
           sum(mentions) AS mentions, sum(reach) AS reach
    FROM share_of_voice_counts GROUP BY ALL),
j AS (
    SELECT v.*, coalesce(b.industry, '(none)') AS industry, coalesce(b.own, false) AS own
    FROM v LEFT JOIN brands b USING (brand))
SELECT *,
       100.0 * mentions / sum(mentions) OVER w AS share_of_voice_pct,
       100.0 * reach / NULLIF(sum(reach) OVER w, 0) AS reach_share_of_voice_pct
FROM j
WINDOW w AS (PARTITION BY window_seconds, window_start, industry);

-- Every customer post aimed at a brand with its first brand reply, if any.
CREATE OR REPLACE VIEW brand_response_facts AS
-- (greatest() ignores NULLs in DuckDB: without the CASE an unanswered post would get 0.)
SELECT i.*, r.first_reply_time,
       CASE WHEN r.first_reply_time IS NOT NULL THEN
           greatest(epoch_ms(r.first_reply_time) - epoch_ms(i.inbound_time), 0) / 60000.0
       END AS response_minutes
FROM inbound_posts i
LEFT JOIN (SELECT platform, parent_post_id, min(reply_time) AS first_reply_time
           FROM brand_replies GROUP BY ALL) r
       ON r.platform = i.platform AND r.parent_post_id = i.post_id;

-- Brand response per window of the inbound post: rate, median and p90 time, 1-hour service
-- level, open complaints. Quantiles interpolate linearly between ranks (quantile_cont).
CREATE OR REPLACE VIEW kpi_response AS
SELECT time_bucket(to_seconds(w.window_seconds), f.inbound_time, TIMESTAMP '1970-01-01')
           AS window_start,
       time_bucket(to_seconds(w.window_seconds), f.inbound_time, TIMESTAMP '1970-01-01')
           + to_seconds(w.window_seconds) AS window_end,
       w.window_seconds, f.brand, f.platform,
       count(*) AS inbound,
       count(f.first_reply_time) AS replied,
       100.0 * count(f.first_reply_time) / count(*) AS response_rate_pct,
       quantile_cont(f.response_minutes, 0.5) AS median_response_minutes,
       quantile_cont(f.response_minutes, 0.9) AS p90_response_minutes,
       avg(f.response_minutes) AS mean_response_minutes,
       100.0 * count(*) FILTER (WHERE f.response_minutes <= 60) / count(*)
           AS answered_within_1h_pct,
       count(*) FILTER (WHERE f.label = 'negative') AS complaints,
       count(*) FILTER (WHERE f.label = 'negative' AND f.first_reply_time IS NULL)
           AS unanswered_complaints
FROM brand_response_facts f CROSS JOIN _cx360_window_sizes w
GROUP BY ALL;

-- Web sessions: a new session starts after 30 minutes without an event of the same visitor
-- (brand + cookie). Landing attributes come from the session's first event.
CREATE OR REPLACE VIEW web_sessions AS
WITH ordered AS (
    SELECT *, lag(event_time) OVER (PARTITION BY brand, cookie_id
                                    ORDER BY event_time, event_id) AS prev_time
    FROM web_events),
marked AS (
    SELECT *, CASE WHEN prev_time IS NULL OR event_time - prev_time > INTERVAL 30 MINUTE
                   THEN 1 ELSE 0 END AS starts
    FROM ordered),
numbered AS (
    SELECT *, sum(starts) OVER (PARTITION BY brand, cookie_id ORDER BY event_time, event_id
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
       first(referrer ORDER BY event_time, event_id) AS landing_referrer,
       first(utm_source ORDER BY event_time, event_id) AS utm_source,
       first(utm_medium ORDER BY event_time, event_id) AS utm_medium,
       first(utm_campaign ORDER BY event_time, event_id) AS utm_campaign,
       first(device ORDER BY event_time, event_id) AS device,
       max(account_id) AS account_id
FROM numbered GROUP BY brand, cookie_id, session_no;

CREATE OR REPLACE VIEW web_sessions_enriched AS
SELECT *,
       coalesce(utm_medium IN ('social', 'paid_social'), false)
         OR coalesce(regexp_matches(landing_referrer,
              '(^|\.)(instagram\.com|facebook\.com|x\.com|t\.co|twitter\.com|tiktok\.com|youtube\.com|linkedin\.com|pinterest\.com)$'),
            false) AS social_referred,
       page_views <= 1 AND NOT added_to_cart AND NOT converted AS bounced
FROM web_sessions;

-- Web KPIs per window of the session start, brand and landing traffic source and campaign.
CREATE OR REPLACE VIEW kpi_web AS
SELECT time_bucket(to_seconds(w.window_seconds), s.session_start, TIMESTAMP '1970-01-01')
           AS window_start,
       time_bucket(to_seconds(w.window_seconds), s.session_start, TIMESTAMP '1970-01-01')
           + to_seconds(w.window_seconds) AS window_end,
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
GROUP BY ALL;

-- The shop funnel per window of the session start, brand and landing source and campaign.
CREATE OR REPLACE VIEW kpi_funnel AS
SELECT time_bucket(to_seconds(w.window_seconds), s.session_start, TIMESTAMP '1970-01-01')
           AS window_start,
       w.window_seconds, s.brand, coalesce(s.utm_source, '(direct)') AS utm_source,
       coalesce(s.utm_campaign, '(none)') AS utm_campaign,
       count(*) AS sessions,
       count(*) FILTER (WHERE s.viewed_product) AS viewed_product,
       count(*) FILTER (WHERE s.added_to_cart) AS added_to_cart,
       count(*) FILTER (WHERE s.converted) AS ordered
FROM web_sessions_enriched s CROSS JOIN _cx360_window_sizes w
GROUP BY ALL;

-- Surveys: NPS, CSAT (top-2 box and mean), CES (mean and % agree), free-text sentiment.
CREATE OR REPLACE VIEW kpi_survey AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand, survey_type,
           sum(responses) AS responses, sum(score_sum) AS score_sum,
           sum(promoters) AS promoters, sum(passives) AS passives,
           sum(detractors) AS detractors, sum(top2) AS top2, sum(agree) AS agree,
           sum(comments) AS comments, sum(comment_positive) AS comment_positive,
           sum(comment_negative) AS comment_negative,
           sum(comment_polarity_sum) AS comment_polarity_sum
    FROM survey_kpis GROUP BY ALL)
SELECT *,
       CASE WHEN survey_type = 'NPS' THEN 100.0 * (promoters - detractors) / responses END AS nps,
       CASE WHEN survey_type = 'CSAT' THEN 100.0 * top2 / responses END AS csat_top2_pct,
       CASE WHEN survey_type = 'CSAT' THEN score_sum / responses END AS csat_mean,
       CASE WHEN survey_type = 'CES' THEN score_sum / responses END AS ces_mean,
       CASE WHEN survey_type = 'CES' THEN 100.0 * agree / responses END AS ces_agree_pct,
       comment_polarity_sum / NULLIF(comments, 0) AS comment_sentiment_mean
FROM s;

-- Sliding windows (`cx360 run --sliding 1d/1h`): the same KPIs over windows of window_seconds
-- starting every window_period_seconds, from tables of their own (an event is in several
-- overlapping windows, so these rows must never be summed with each other or with the fixed
-- windows). Roll-ups across dimensions within one window are still ratios of sums.
CREATE OR REPLACE VIEW kpi_social_sliding AS
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

CREATE OR REPLACE VIEW kpi_survey_sliding AS
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
       CASE WHEN survey_type = 'CSAT' THEN score_sum / responses END AS csat_mean,
       CASE WHEN survey_type = 'CES' THEN score_sum / responses END AS ces_mean,
       CASE WHEN survey_type = 'CES' THEN 100.0 * agree / responses END AS ces_agree_pct,
       comment_polarity_sum / NULLIF(comments, 0) AS comment_sentiment_mean
FROM s;

-- What customers talk about: CX aspects by sentiment.
CREATE OR REPLACE VIEW kpi_aspects AS
SELECT window_start, window_end, window_seconds, source, brand, aspect,
       sum(mentions) AS mentions,
       sum(mentions) FILTER (WHERE label = 'negative') AS negative,
       sum(mentions) FILTER (WHERE label = 'positive') AS positive,
       100.0 * coalesce(sum(mentions) FILTER (WHERE label = 'negative'), 0) / sum(mentions)
           AS negative_share_pct
FROM aspect_mentions GROUP BY ALL;

-- ---------------------------------------------------------------------------------------------
-- Customer 360 (docs/identity.md). Facts are keyed by identifier and joined with the CURRENT
-- identity map here, so a merge in a later micro-batch re-attributes all history at once.
-- An identifier without a map row (never linked) is its own customer: an account id is its
-- own key, anything else 'K' || first 16 hex of sha256(identifier) (as in identity.py).
CREATE OR REPLACE MACRO cx360_implicit_key(identifier) AS
    CASE WHEN identifier LIKE 'acct:%' THEN substr(identifier, 6)
         ELSE 'K' || left(sha256(identifier), 16) END;

CREATE OR REPLACE VIEW customer_touchpoints_keyed AS
SELECT t.*, coalesce(m.customer_key, cx360_implicit_key(t.identifier)) AS customer_key
FROM customer_touchpoints t LEFT JOIN identity_map m USING (identifier);

-- Journey phase from evidence (the latest phase reached; docs/identity.md gives the rules).
CREATE OR REPLACE MACRO cx360_journey_phase(orders, promoter, positive_voice, considered,
                                            engaged) AS
    CASE WHEN orders >= 2 OR (orders >= 1 AND (promoter OR positive_voice)) THEN 'loyalty'
         WHEN orders >= 1 THEN 'purchase'
         WHEN considered THEN 'consideration'
         WHEN engaged THEN 'favorability'
         ELSE 'awareness' END;

-- What each touchpoint proves about the journey (docs/identity.md gives the rules), once per
-- brand and once for '(all)' (over every brand). Both the current phase and the phase as of
-- any window end are computed from these flags, so the two always follow the same rules.
CREATE OR REPLACE VIEW customer_touchpoint_evidence AS
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

-- Evidence per customer and brand ('(all)' = over every brand).
CREATE OR REPLACE VIEW customer_journey_evidence AS
SELECT customer_key, brand,
       count(DISTINCT order_id) AS orders,
       coalesce(first(nps_score ORDER BY event_time DESC, event_id DESC)
                FILTER (WHERE nps_score IS NOT NULL) >= 9, false) AS promoter,
       bool_or(positive_voice) AS positive_voice,
       bool_or(considered) AS considered,
       bool_or(engaged) AS engaged
FROM customer_touchpoint_evidence GROUP BY customer_key, brand;

CREATE OR REPLACE VIEW customer_journey AS
SELECT customer_key, brand, orders,
       cx360_journey_phase(orders, promoter, positive_voice, considered, engaged)
           AS journey_phase
FROM customer_journey_evidence;

-- Journey KPIs: customers per phase and brand ('(all)': phase over every brand).
CREATE OR REPLACE VIEW kpi_journey AS
SELECT brand, journey_phase,
       CASE journey_phase WHEN 'awareness' THEN 1 WHEN 'favorability' THEN 2
            WHEN 'consideration' THEN 3 WHEN 'purchase' THEN 4 ELSE 5 END AS phase_no,
       count(*) AS customers,
       100.0 * count(*) / sum(count(*)) OVER (PARTITION BY brand) AS customers_pct
FROM customer_journey GROUP BY brand, journey_phase;

-- The phase of a customer (per brand and '(all)') as of the end of every window in which it
-- had a touchpoint, from the evidence of all its touchpoints up to that end, next to the
-- phase as of the end of the previous window (NULL: no touchpoint before). Evidence only
-- grows with touchpoints, so the phase can change only in windows with a touchpoint: the
-- previous active window's phase is the phase at the end of the period just before. Computed
-- from the facts with the current identity map, like customer_journey: exact whatever the
-- micro-batches, and re-attributed when identities merge.
CREATE OR REPLACE VIEW customer_journey_steps AS
WITH e AS (
    SELECT ev.*, w.window_seconds,
           time_bucket(to_seconds(w.window_seconds), ev.event_time, TIMESTAMP '1970-01-01')
               AS window_start
    FROM customer_touchpoint_evidence ev CROSS JOIN _cx360_window_sizes w),
new_orders AS (  -- an order counts from the window of its first touchpoint on
    SELECT customer_key, brand, window_seconds, window_start, count(*) AS new_orders
    FROM (SELECT customer_key, brand, window_seconds, order_id, min(window_start) AS window_start
          FROM e WHERE order_id IS NOT NULL GROUP BY customer_key, brand, window_seconds, order_id)
    GROUP BY customer_key, brand, window_seconds, window_start),
per_window AS (
    SELECT customer_key, brand, window_seconds, window_start,
           first(nps_score ORDER BY event_time DESC, event_id DESC)
               FILTER (WHERE nps_score IS NOT NULL) AS last_nps,
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
latest_nps AS (  -- the newest NPS answer up to the window end (gap-filled forward)
    SELECT *, first_value(last_nps) OVER (
                  PARTITION BY customer_key, brand, window_seconds, nps_answers
                  ORDER BY window_start ROWS UNBOUNDED PRECEDING) AS nps_latest
    FROM running),
phased AS (
    SELECT customer_key, brand, window_seconds, window_start, orders,
           cx360_journey_phase(orders, coalesce(nps_latest >= 9, false), positive_voice = 1,
                               considered = 1, engaged = 1) AS to_phase
    FROM latest_nps)
SELECT customer_key, brand, window_seconds, window_start,
       window_start + to_seconds(window_seconds) AS window_end, orders,
       lag(to_phase) OVER (PARTITION BY customer_key, brand, window_seconds
                           ORDER BY window_start) AS from_phase,
       to_phase
FROM phased;

-- Journey transitions per window and brand: customers with a touchpoint in the window, by
-- phase at the end of the previous window ('(new)': first seen in this window) and phase at
-- the end of this one. direction: new | same | forward | back (by phase_no).
CREATE OR REPLACE VIEW kpi_journey_transitions AS
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

-- One row per customer. as_of = the newest touchpoint in the warehouse (not the wall clock,
-- so the profile of a given warehouse is reproducible).
CREATE OR REPLACE VIEW customer_360 AS
WITH t AS (SELECT * FROM customer_touchpoints_keyed),
as_of AS (SELECT max(event_time) AS as_of FROM customer_touchpoints),
ids AS (
    SELECT customer_key, list(DISTINCT identifier ORDER BY identifier) AS identifiers
    FROM (SELECT customer_key, identifier FROM identity_map
          UNION SELECT customer_key, identifier FROM t)
    GROUP BY customer_key),
by_channel AS (
    SELECT customer_key, string_agg(channel || '=' || n, ', ' ORDER BY channel) AS channels
    FROM (SELECT customer_key, channel, count(*) AS n FROM t GROUP BY ALL) GROUP BY ALL),
by_touchpoint AS (
    SELECT customer_key, string_agg(touchpoint || '=' || n, ', ' ORDER BY touchpoint)
               AS touchpoints
    FROM (SELECT customer_key, touchpoint, count(*) AS n FROM t GROUP BY ALL) GROUP BY ALL),
complaints AS (
    SELECT t.customer_key, count(*) AS open_complaints
    FROM t JOIN brand_response_facts f USING (event_id)
    WHERE f.label = 'negative' AND f.first_reply_time IS NULL GROUP BY ALL),
agg AS (
    SELECT t.customer_key,
           count(*) FILTER (WHERE channel = 'social') AS social_events,
           count(*) FILTER (WHERE channel = 'web') AS web_events,
           count(*) FILTER (WHERE channel = 'survey') AS survey_responses,
           min(event_time) AS first_seen, max(event_time) AS last_seen,
           count(DISTINCT order_id) AS orders,
           coalesce(sum(order_value) FILTER (WHERE touchpoint = 'web:order'), 0) AS revenue,
           first(score ORDER BY event_time DESC, event_id DESC)
               FILTER (WHERE survey_type = 'NPS') AS nps_latest,
           avg(score) FILTER (WHERE survey_type = 'NPS') AS nps_avg,
           first(score ORDER BY event_time DESC, event_id DESC)
               FILTER (WHERE survey_type = 'CSAT') AS csat_latest,
           avg(score) FILTER (WHERE survey_type = 'CSAT') AS csat_avg,
           first(score ORDER BY event_time DESC, event_id DESC)
               FILTER (WHERE survey_type = 'CES') AS ces_latest,
           avg(score) FILTER (WHERE survey_type = 'CES') AS ces_avg,
           avg(polarity) FILTER (WHERE event_time > a.as_of - INTERVAL 7 DAY)
               AS sentiment_last_7d,
           avg(polarity) FILTER (WHERE event_time <= a.as_of - INTERVAL 7 DAY)
               AS sentiment_before,
           any_value(a.as_of) AS as_of
    FROM t CROSS JOIN as_of a GROUP BY t.customer_key),
scored AS (
    SELECT agg.*, ids.identifiers, len(ids.identifiers) AS identifier_count,
           c.channels, p.touchpoints, coalesce(o.open_complaints, 0) AS open_complaints,
           j.journey_phase,
           sentiment_last_7d - sentiment_before AS sentiment_trend,
           (epoch_ms(as_of) - epoch_ms(last_seen)) / 86400000.0 AS days_since_last_seen,
           greatest((epoch_ms(as_of) - epoch_ms(first_seen)) / (30 * 86400000.0), 1.0)
               AS months_observed
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
             + 0.15 * CASE WHEN coalesce(sentiment_trend, 0) < 0 THEN 1 ELSE 0 END), 3)
               AS churn_risk
    FROM scored)
SELECT customer_key, identifiers, identifier_count, channels, touchpoints,
       social_events, web_events, survey_responses, first_seen, last_seen, journey_phase,
       orders, revenue, nps_latest, nps_avg, csat_latest, csat_avg, ces_latest, ces_avg,
       sentiment_last_7d, sentiment_before, sentiment_trend, open_complaints,
       days_since_last_seen, churn_risk,
       -- CLV = m * r / (1 + i - r): m = 30 % margin on the monthly revenue, r = retention
       -- (1 - churn_risk, at most 0.95), i = 1 % monthly discount rate.
       -- Rounded in decimal at 6 places, then to cents, so every backend rounds a
       -- half-cent the same way (a double 47.405 is 47.40499...).
       round(CAST(0.3 * revenue / months_observed * least(1 - churn_risk, 0.95)
                  / (1 + 0.01 - least(1 - churn_risk, 0.95)) AS DECIMAL(18, 6)), 2)::DOUBLE
           AS clv_estimate,
       as_of
FROM risk;

-- Churn-risk distribution per brand: customers of customer_360 per band of churn_risk, a
-- customer counting for every brand it has a touchpoint with ('(all)': every customer once).
-- Bands: low < 0.25 <= medium < 0.5 <= high < 0.75 <= critical. mean_churn_risk is the mean
-- score of the band, brand_mean_churn_risk of the brand; churn_risk_sum (expected churners)
-- adds up over bands.
CREATE OR REPLACE VIEW kpi_churn_risk AS
WITH by_brand AS (
    SELECT DISTINCT customer_key, brand FROM customer_touchpoints_keyed
    UNION ALL
    SELECT customer_key, '(all)' FROM customer_360),
banded AS (
    SELECT b.brand, c.churn_risk,
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
