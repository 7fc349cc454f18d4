-- KPI views, BigQuery dialect (GoogleSQL): a line-by-line port of duckdb_views.sql (same views,
-- same columns, same order, same results; tests/test_warehouse_backends_e2e.py compares them).
-- `${dataset}` is replaced by `project.dataset` (BigQuery views need qualified names). Each
-- statement runs as its own query job, in file order. Porting a DuckDB view:
--   GROUP BY ALL                    -> GROUP BY ordinals
--   count(*) FILTER (WHERE c)       -> COUNTIF(c);  agg(x) FILTER (WHERE c) -> agg(IF(c, x, NULL))
--   bool_or(c)                      -> LOGICAL_OR(c);  any_value -> ANY_VALUE
--   epoch_ms(t)                     -> UNIX_MILLIS(t)
--   time_bucket(to_seconds(s), t, TIMESTAMP '1970-01-01')
--                                   -> TIMESTAMP_ADD(TIMESTAMP '1970-01-01 00:00:00+00',
--                                        INTERVAL DIV(UNIX_SECONDS(t), s) * s SECOND)
--                                      (not TIMESTAMP_MILLIS: the emulator then returns
--                                      millisecond timestamps it cannot convert)
--   + to_seconds(s)                 -> TIMESTAMP_ADD(..., INTERVAL s SECOND)
--   quantile_cont(x, q)             -> PERCENTILE_CONT(x, q) OVER (PARTITION BY the group) in a
--                                      subquery, then ANY_VALUE (it is analytic-only here)
--   first(x ORDER BY o)             -> ARRAY_AGG(STRUCT(x AS v) ORDER BY o LIMIT 1)[OFFSET(0)].v
--                                      (the STRUCT keeps a NULL first value, as DuckDB does)
--   first(x ORDER BY o) FILTER (WHERE c)
--                                   -> ROW_NUMBER() OVER (PARTITION BY group ORDER BY o) over
--                                      the rows where c, then rank 1 (not IGNORE NULLS with
--                                      LIMIT 1: the emulator applies the LIMIT first)
--   list(DISTINCT x ORDER BY x), len -> ARRAY_AGG(DISTINCT x ORDER BY x), ARRAY_LENGTH
--   a || '=' || n (n integer)       -> a || '=' || CAST(n AS STRING)
--   regexp_matches(s, re)           -> REGEXP_CONTAINS(s, r're');  sha256(s) hex -> TO_HEX(SHA256(s))
--   MACROs                          -> inlined (the expression is repeated where it is used)

CREATE OR REPLACE VIEW `${dataset}._cx360_window_sizes` AS
SELECT DISTINCT window_seconds FROM `${dataset}.event_counts`;

CREATE OR REPLACE VIEW `${dataset}.kpi_social` AS
SELECT window_start, window_end, window_seconds, brand, platform, language,
       mentions, ugc_posts, inbound, scored, positive, neutral, negative,
       polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       brand_posts, brand_replies, brand_post_reach, likes, shares, comments,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM `${dataset}.social_kpis`;

CREATE OR REPLACE VIEW `${dataset}.kpi_social_brand` AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand,
           SUM(mentions) AS mentions, SUM(ugc_posts) AS ugc_posts, SUM(inbound) AS inbound,
           SUM(scored) AS scored, SUM(positive) AS positive, SUM(neutral) AS neutral,
           SUM(negative) AS negative, SUM(polarity_sum) AS polarity_sum,
           SUM(brand_posts) AS brand_posts, SUM(brand_replies) AS brand_replies,
           SUM(brand_post_reach) AS brand_post_reach, SUM(likes) AS likes,
           SUM(shares) AS shares, SUM(comments) AS comments
    FROM `${dataset}.social_kpis` GROUP BY 1, 2, 3, 4)
SELECT *, polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM s;

CREATE OR REPLACE VIEW `${dataset}.kpi_share_of_voice` AS
WITH v AS (
    SELECT window_start, window_end, window_seconds, brand,
           SUM(mentions) AS mentions, SUM(reach) AS reach
    FROM `${dataset}.share_of_voice_counts` GROUP BY 1, 2, 3, 4),
j AS (
    SELECT v.*, COALESCE(b.industry, '(none)') AS industry, COALESCE(b.own, FALSE) AS own
    FROM v LEFT JOIN `${dataset}.brands` b USING (brand))
SELECT *,
       100.0 * mentions / SUM(mentions) OVER (PARTITION BY window_seconds, window_start, industry)
           AS share_of_voice_pct,
       100.0 * reach / NULLIF(SUM(reach) OVER (PARTITION BY window_seconds, window_start,
                                                industry), 0) AS reach_share_of_voice_pct
FROM j;

CREATE OR REPLACE VIEW `${dataset}.brand_response_facts` AS
SELECT i.*, r.first_reply_time,
       CASE WHEN r.first_reply_time IS NOT NULL THEN
           GREATEST(UNIX_MILLIS(r.first_reply_time) - UNIX_MILLIS(i.inbound_time), 0) / 60000.0
       END AS response_minutes
FROM `${dataset}.inbound_posts` i
LEFT JOIN (SELECT platform, parent_post_id, MIN(reply_time) AS first_reply_time
           FROM `${dataset}.brand_replies` GROUP BY 1, 2) r
       ON r.platform = i.platform AND r.parent_post_id = i.post_id;

CREATE OR REPLACE VIEW `${dataset}.kpi_response` AS
WITH f AS (
    SELECT TIMESTAMP_ADD(TIMESTAMP '1970-01-01 00:00:00+00', INTERVAL DIV(UNIX_SECONDS(f.inbound_time), w.window_seconds) * w.window_seconds SECOND) AS window_start,
           w.window_seconds, f.brand, f.platform, f.first_reply_time, f.response_minutes,
           f.label
    FROM `${dataset}.brand_response_facts` f CROSS JOIN `${dataset}._cx360_window_sizes` w),
q AS (
    SELECT *,
           PERCENTILE_CONT(response_minutes, 0.5) OVER (
               PARTITION BY window_start, window_seconds, brand, platform) AS q50,
           PERCENTILE_CONT(response_minutes, 0.9) OVER (
               PARTITION BY window_start, window_seconds, brand, platform) AS q90
    FROM f)
SELECT window_start, TIMESTAMP_ADD(window_start, INTERVAL window_seconds SECOND) AS window_end,
       window_seconds, brand, platform,
       COUNT(*) AS inbound,
       COUNT(first_reply_time) AS replied,
       100.0 * COUNT(first_reply_time) / COUNT(*) AS response_rate_pct,
       ANY_VALUE(q50) AS median_response_minutes,
       ANY_VALUE(q90) AS p90_response_minutes,
       AVG(response_minutes) AS mean_response_minutes,
       100.0 * COUNTIF(response_minutes <= 60) / COUNT(*) AS answered_within_1h_pct,
       COUNTIF(label = 'negative') AS complaints,
       COUNTIF(label = 'negative' AND first_reply_time IS NULL) AS unanswered_complaints
FROM q
GROUP BY 1, 2, 3, 4, 5;

CREATE OR REPLACE VIEW `${dataset}.web_sessions` AS
WITH ordered AS (
    SELECT *, LAG(event_time) OVER (PARTITION BY brand, cookie_id
                                    ORDER BY event_time, event_id) AS prev_time
    FROM `${dataset}.web_events`),
marked AS (
    SELECT *, CASE WHEN prev_time IS NULL
                     OR TIMESTAMP_DIFF(event_time, prev_time, MICROSECOND) > 1800000000
                   THEN 1 ELSE 0 END AS starts
    FROM ordered),
numbered AS (
    SELECT *, SUM(starts) OVER (PARTITION BY brand, cookie_id ORDER BY event_time, event_id
                                ROWS UNBOUNDED PRECEDING) AS session_no
    FROM marked)
SELECT brand, cookie_id, session_no,
       MIN(event_time) AS session_start, MAX(event_time) AS session_end,
       COUNT(*) AS events,
       COUNTIF(event_type IN ('page_view', 'product_view')) AS page_views,
       LOGICAL_OR(event_type = 'product_view') AS viewed_product,
       LOGICAL_OR(event_type = 'add_to_cart') AS added_to_cart,
       LOGICAL_OR(event_type = 'order') AS converted,
       COUNT(DISTINCT order_id) AS orders,
       COALESCE(SUM(order_value), 0) AS revenue,
       ARRAY_AGG(STRUCT(referrer AS v) ORDER BY event_time, event_id LIMIT 1)[OFFSET(0)].v
           AS landing_referrer,
       ARRAY_AGG(STRUCT(utm_source AS v) ORDER BY event_time, event_id LIMIT 1)[OFFSET(0)].v
           AS utm_source,
       ARRAY_AGG(STRUCT(utm_medium AS v) ORDER BY event_time, event_id LIMIT 1)[OFFSET(0)].v
           AS utm_medium,
       ARRAY_AGG(STRUCT(utm_campaign AS v) ORDER BY event_time, event_id LIMIT 1)[OFFSET(0)].v
           AS utm_campaign,
       ARRAY_AGG(STRUCT(device AS v) ORDER BY event_time, event_id LIMIT 1)[OFFSET(0)].v
           AS device,
       MAX(account_id) AS account_id
FROM numbered GROUP BY brand, cookie_id, session_no;

CREATE OR REPLACE VIEW `${dataset}.web_sessions_enriched` AS
SELECT *,
       COALESCE(utm_medium IN ('social', 'paid_social'), FALSE)
         OR COALESCE(REGEXP_CONTAINS(landing_referrer,
              r'(^|\.)(instagram\.com|facebook\.com|x\.com|t\.co|twitter\.com|tiktok\.com|youtube\.com|linkedin\.com|pinterest\.com)$'),
            FALSE) AS social_referred,
       page_views <= 1 AND NOT added_to_cart AND NOT converted AS bounced
FROM `${dataset}.web_sessions`;

CREATE OR REPLACE VIEW `${dataset}.kpi_web` AS
SELECT TIMESTAMP_ADD(TIMESTAMP '1970-01-01 00:00:00+00', INTERVAL DIV(UNIX_SECONDS(s.session_start), w.window_seconds) * w.window_seconds SECOND) AS window_start,
       TIMESTAMP_ADD(TIMESTAMP_ADD(TIMESTAMP '1970-01-01 00:00:00+00', INTERVAL DIV(UNIX_SECONDS(s.session_start), w.window_seconds) * w.window_seconds SECOND),
                     INTERVAL w.window_seconds SECOND) AS window_end,
       w.window_seconds, s.brand, COALESCE(s.utm_source, '(direct)') AS utm_source,
       COALESCE(s.utm_campaign, '(none)') AS utm_campaign,
       COUNT(*) AS sessions,
       COUNTIF(s.converted) AS converted_sessions,
       100.0 * COUNTIF(s.converted) / COUNT(*) AS conversion_rate_pct,
       COUNTIF(s.bounced) AS bounced_sessions,
       100.0 * COUNTIF(s.bounced) / COUNT(*) AS bounce_rate_pct,
       SUM(s.orders) AS orders, SUM(s.revenue) AS revenue,
       COUNTIF(s.social_referred) AS social_referred_sessions,
       COUNTIF(s.social_referred AND s.converted) AS social_referred_conversions
FROM `${dataset}.web_sessions_enriched` s CROSS JOIN `${dataset}._cx360_window_sizes` w
GROUP BY 1, 2, 3, 4, 5, 6;

CREATE OR REPLACE VIEW `${dataset}.kpi_funnel` AS
SELECT TIMESTAMP_ADD(TIMESTAMP '1970-01-01 00:00:00+00', INTERVAL DIV(UNIX_SECONDS(s.session_start), w.window_seconds) * w.window_seconds SECOND) AS window_start,
       w.window_seconds, s.brand, COALESCE(s.utm_source, '(direct)') AS utm_source,
       COALESCE(s.utm_campaign, '(none)') AS utm_campaign,
       COUNT(*) AS sessions,
       COUNTIF(s.viewed_product) AS viewed_product,
       COUNTIF(s.added_to_cart) AS added_to_cart,
       COUNTIF(s.converted) AS ordered
FROM `${dataset}.web_sessions_enriched` s CROSS JOIN `${dataset}._cx360_window_sizes` w
GROUP BY 1, 2, 3, 4, 5;

CREATE OR REPLACE VIEW `${dataset}.kpi_survey` AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand, survey_type,
           SUM(responses) AS responses, SUM(score_sum) AS score_sum,
           SUM(promoters) AS promoters, SUM(passives) AS passives,
           SUM(detractors) AS detractors, SUM(top2) AS top2, SUM(agree) AS agree,
           SUM(comments) AS comments, SUM(comment_positive) AS comment_positive,
           SUM(comment_negative) AS comment_negative,
           SUM(comment_polarity_sum) AS comment_polarity_sum
    FROM `${dataset}.survey_kpis` GROUP BY 1, 2, 3, 4, 5)
SELECT *,
       CASE WHEN survey_type = 'NPS' THEN 100.0 * (promoters - detractors) / responses END AS nps,
       CASE WHEN survey_type = 'CSAT' THEN 100.0 * top2 / responses END AS csat_top2_pct,
       CASE WHEN survey_type = 'CSAT' THEN score_sum / responses END AS csat_mean,
       CASE WHEN survey_type = 'CES' THEN score_sum / responses END AS ces_mean,
       CASE WHEN survey_type = 'CES' THEN 100.0 * agree / responses END AS ces_agree_pct,
       comment_polarity_sum / NULLIF(comments, 0) AS comment_sentiment_mean
FROM s;

-- Sliding windows (`cx360 run --sliding`): see duckdb_views.sql.
CREATE OR REPLACE VIEW `${dataset}.kpi_social_sliding` AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, window_period_seconds, brand,
           SUM(mentions) AS mentions, SUM(ugc_posts) AS ugc_posts, SUM(inbound) AS inbound,
           SUM(scored) AS scored, SUM(positive) AS positive, SUM(neutral) AS neutral,
           SUM(negative) AS negative, SUM(polarity_sum) AS polarity_sum,
           SUM(brand_posts) AS brand_posts, SUM(brand_replies) AS brand_replies,
           SUM(brand_post_reach) AS brand_post_reach, SUM(likes) AS likes,
           SUM(shares) AS shares, SUM(comments) AS comments
    FROM `${dataset}.social_kpis_sliding` GROUP BY 1, 2, 3, 4, 5)
SELECT *, polarity_sum / NULLIF(scored, 0) AS sentiment_mean,
       100.0 * positive / NULLIF(scored, 0) AS positive_share_pct,
       100.0 * negative / NULLIF(scored, 0) AS negative_share_pct,
       likes + shares + comments AS interactions,
       100.0 * (likes + shares + comments) / NULLIF(brand_post_reach, 0) AS engagement_rate_pct
FROM s;

CREATE OR REPLACE VIEW `${dataset}.kpi_survey_sliding` AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, window_period_seconds, brand, survey_type,
           SUM(responses) AS responses, SUM(score_sum) AS score_sum,
           SUM(promoters) AS promoters, SUM(passives) AS passives,
           SUM(detractors) AS detractors, SUM(top2) AS top2, SUM(agree) AS agree,
           SUM(comments) AS comments, SUM(comment_positive) AS comment_positive,
           SUM(comment_negative) AS comment_negative,
           SUM(comment_polarity_sum) AS comment_polarity_sum
    FROM `${dataset}.survey_kpis_sliding` GROUP BY 1, 2, 3, 4, 5, 6)
SELECT *,
       CASE WHEN survey_type = 'NPS' THEN 100.0 * (promoters - detractors) / responses END AS nps,
       CASE WHEN survey_type = 'CSAT' THEN 100.0 * top2 / responses END AS csat_top2_pct,
       CASE WHEN survey_type = 'CSAT' THEN score_sum / responses END AS csat_mean,
       CASE WHEN survey_type = 'CES' THEN score_sum / responses END AS ces_mean,
       CASE WHEN survey_type = 'CES' THEN 100.0 * agree / responses END AS ces_agree_pct,
       comment_polarity_sum / NULLIF(comments, 0) AS comment_sentiment_mean
FROM s;

CREATE OR REPLACE VIEW `${dataset}.kpi_aspects` AS
SELECT window_start, window_end, window_seconds, source, brand, aspect,
       SUM(mentions) AS mentions,
       SUM(IF(label = 'negative', mentions, NULL)) AS negative,
       SUM(IF(label = 'positive', mentions, NULL)) AS positive,
       100.0 * COALESCE(SUM(IF(label = 'negative', mentions, NULL)), 0) / SUM(mentions)
           AS negative_share_pct
FROM `${dataset}.aspect_mentions` GROUP BY 1, 2, 3, 4, 5, 6;

-- Customer 360 (docs/identity.md): see duckdb_views.sql for the rules. The implicit key and
-- the journey phase (DuckDB macros) are inlined.
CREATE OR REPLACE VIEW `${dataset}.customer_touchpoints_keyed` AS
SELECT t.*, COALESCE(m.customer_key,
                     CASE WHEN t.identifier LIKE 'acct:%' THEN SUBSTR(t.identifier, 6)
                          ELSE 'K' || LEFT(TO_HEX(SHA256(t.identifier)), 16) END)
                AS customer_key
FROM `${dataset}.customer_touchpoints` t
LEFT JOIN `${dataset}.identity_map` m USING (identifier);

-- What each touchpoint proves about the journey, per brand and '(all)' (see duckdb_views.sql).
CREATE OR REPLACE VIEW `${dataset}.customer_touchpoint_evidence` AS
WITH t AS (
    SELECT customer_key, brand, event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM `${dataset}.customer_touchpoints_keyed`
    UNION ALL
    SELECT customer_key, '(all)', event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM `${dataset}.customer_touchpoints_keyed`)
SELECT customer_key, brand, event_id, event_time, order_id,
       CASE WHEN survey_type = 'NPS' THEN score END AS nps_score,
       COALESCE(channel = 'social' AND label = 'positive' AND touchpoint NOT LIKE '%:reply',
                FALSE) AS positive_voice,
       COALESCE(touchpoint IN ('web:product_view', 'web:add_to_cart')
                OR (channel = 'social' AND aimed_at_brand), FALSE) AS considered,
       COALESCE(touchpoint LIKE '%:like' OR touchpoint LIKE '%:comment'
                OR touchpoint LIKE '%:share' OR label = 'positive'
                OR touchpoint = 'web:account_link', FALSE) AS engaged
FROM t;

CREATE OR REPLACE VIEW `${dataset}.customer_journey_evidence` AS
WITH t AS (
    SELECT customer_key, brand, event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM `${dataset}.customer_touchpoints_keyed`
    UNION ALL
    SELECT customer_key, '(all)', event_id, event_time, channel, touchpoint, label, order_id,
           survey_type, score, aimed_at_brand FROM `${dataset}.customer_touchpoints_keyed`),
-- The latest NPS answer per customer and brand by ROW_NUMBER, not ARRAY_AGG(... IGNORE NULLS
-- ORDER BY ... LIMIT 1): the emulator applies the LIMIT before dropping the NULLs.
latest_nps AS (
    SELECT customer_key, brand, score AS latest_nps
    FROM (SELECT customer_key, brand, score,
                 ROW_NUMBER() OVER (PARTITION BY customer_key, brand
                                    ORDER BY event_time DESC, event_id DESC) AS rn
          FROM t WHERE survey_type = 'NPS')
    WHERE rn = 1)
SELECT customer_key, brand,
       COUNT(DISTINCT order_id) AS orders,
       COALESCE(MAX(latest_nps) >= 9, FALSE) AS promoter,
       COALESCE(LOGICAL_OR(channel = 'social' AND label = 'positive'
                           AND touchpoint NOT LIKE '%:reply'), FALSE) AS positive_voice,
       COALESCE(LOGICAL_OR(touchpoint IN ('web:product_view', 'web:add_to_cart')
                           OR (channel = 'social' AND aimed_at_brand)), FALSE) AS considered,
       COALESCE(LOGICAL_OR(touchpoint LIKE '%:like' OR touchpoint LIKE '%:comment'
                           OR touchpoint LIKE '%:share' OR label = 'positive'
                           OR touchpoint = 'web:account_link'), FALSE) AS engaged
FROM t LEFT JOIN latest_nps USING (customer_key, brand) GROUP BY customer_key, brand;

CREATE OR REPLACE VIEW `${dataset}.customer_journey` AS
SELECT customer_key, brand, orders,
       CASE WHEN orders >= 2 OR (orders >= 1 AND (promoter OR positive_voice)) THEN 'loyalty'
            WHEN orders >= 1 THEN 'purchase'
            WHEN considered THEN 'consideration'
            WHEN engaged THEN 'favorability'
            ELSE 'awareness' END AS journey_phase
FROM `${dataset}.customer_journey_evidence`;

CREATE OR REPLACE VIEW `${dataset}.kpi_journey` AS
SELECT brand, journey_phase,
       CASE journey_phase WHEN 'awareness' THEN 1 WHEN 'favorability' THEN 2
            WHEN 'consideration' THEN 3 WHEN 'purchase' THEN 4 ELSE 5 END AS phase_no,
       COUNT(*) AS customers,
       100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY brand) AS customers_pct
FROM `${dataset}.customer_journey` GROUP BY brand, journey_phase;

-- Phase per customer as of every window end with a touchpoint (see duckdb_views.sql). The
-- newest NPS answer of a window is picked with ROW_NUMBER; the phase CASE is the macro inlined.
CREATE OR REPLACE VIEW `${dataset}.customer_journey_steps` AS
WITH e AS (
    SELECT ev.*, w.window_seconds,
           TIMESTAMP_ADD(TIMESTAMP '1970-01-01 00:00:00+00', INTERVAL DIV(UNIX_SECONDS(ev.event_time), w.window_seconds) * w.window_seconds SECOND) AS window_start
    FROM `${dataset}.customer_touchpoint_evidence` ev
    CROSS JOIN `${dataset}._cx360_window_sizes` w),
new_orders AS (
    SELECT customer_key, brand, window_seconds, window_start, COUNT(*) AS new_orders
    FROM (SELECT customer_key, brand, window_seconds, order_id, MIN(window_start) AS window_start
          FROM e WHERE order_id IS NOT NULL GROUP BY 1, 2, 3, 4)
    GROUP BY 1, 2, 3, 4),
nps_ranked AS (
    SELECT customer_key, brand, window_seconds, window_start, nps_score,
           ROW_NUMBER() OVER (PARTITION BY customer_key, brand, window_seconds, window_start
                              ORDER BY event_time DESC, event_id DESC) AS rn
    FROM e WHERE nps_score IS NOT NULL),
per_window AS (
    SELECT customer_key, brand, window_seconds, window_start,
           MAX(IF(positive_voice, 1, 0)) AS positive_voice,
           MAX(IF(considered, 1, 0)) AS considered,
           MAX(IF(engaged, 1, 0)) AS engaged
    FROM e GROUP BY 1, 2, 3, 4),
running AS (
    SELECT p.customer_key, p.brand, p.window_seconds, p.window_start, n.nps_score AS last_nps,
           SUM(COALESCE(o.new_orders, 0)) OVER (
               PARTITION BY p.customer_key, p.brand, p.window_seconds ORDER BY p.window_start
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS orders,
           MAX(p.positive_voice) OVER (
               PARTITION BY p.customer_key, p.brand, p.window_seconds ORDER BY p.window_start
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS positive_voice,
           MAX(p.considered) OVER (
               PARTITION BY p.customer_key, p.brand, p.window_seconds ORDER BY p.window_start
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS considered,
           MAX(p.engaged) OVER (
               PARTITION BY p.customer_key, p.brand, p.window_seconds ORDER BY p.window_start
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS engaged,
           COUNT(n.nps_score) OVER (
               PARTITION BY p.customer_key, p.brand, p.window_seconds ORDER BY p.window_start
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS nps_answers
    FROM per_window p
    LEFT JOIN new_orders o
           ON o.customer_key = p.customer_key AND o.brand = p.brand
          AND o.window_seconds = p.window_seconds AND o.window_start = p.window_start
    LEFT JOIN nps_ranked n
           ON n.customer_key = p.customer_key AND n.brand = p.brand
          AND n.window_seconds = p.window_seconds AND n.window_start = p.window_start
          AND n.rn = 1),
latest_nps AS (
    SELECT *, FIRST_VALUE(last_nps) OVER (
                  PARTITION BY customer_key, brand, window_seconds, nps_answers
                  ORDER BY window_start
                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS nps_latest
    FROM running),
phased AS (
    SELECT customer_key, brand, window_seconds, window_start, orders,
           CASE WHEN orders >= 2 OR (orders >= 1 AND (COALESCE(nps_latest >= 9, FALSE)
                                                      OR positive_voice = 1)) THEN 'loyalty'
                WHEN orders >= 1 THEN 'purchase'
                WHEN considered = 1 THEN 'consideration'
                WHEN engaged = 1 THEN 'favorability'
                ELSE 'awareness' END AS to_phase
    FROM latest_nps)
SELECT customer_key, brand, window_seconds, window_start,
       TIMESTAMP_ADD(window_start, INTERVAL window_seconds SECOND) AS window_end, orders,
       LAG(to_phase) OVER (PARTITION BY customer_key, brand, window_seconds
                           ORDER BY window_start) AS from_phase,
       to_phase
FROM phased;

CREATE OR REPLACE VIEW `${dataset}.kpi_journey_transitions` AS
WITH s AS (
    SELECT window_start, window_end, window_seconds, brand,
           COALESCE(from_phase, '(new)') AS from_phase, to_phase,
           CASE from_phase WHEN 'awareness' THEN 1 WHEN 'favorability' THEN 2
                WHEN 'consideration' THEN 3 WHEN 'purchase' THEN 4 WHEN 'loyalty' THEN 5
                ELSE 0 END AS from_phase_no,
           CASE to_phase WHEN 'awareness' THEN 1 WHEN 'favorability' THEN 2
                WHEN 'consideration' THEN 3 WHEN 'purchase' THEN 4 ELSE 5 END AS to_phase_no
    FROM `${dataset}.customer_journey_steps`)
SELECT window_start, window_end, window_seconds, brand, from_phase, to_phase,
       from_phase_no, to_phase_no,
       CASE WHEN from_phase_no = 0 THEN 'new' WHEN to_phase_no = from_phase_no THEN 'same'
            WHEN to_phase_no > from_phase_no THEN 'forward' ELSE 'back' END AS direction,
       COUNT(*) AS customers
FROM s
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;

CREATE OR REPLACE VIEW `${dataset}.customer_360` AS
-- latest_rank: 1 for each customer's latest answer per survey type (see latest_nps above).
WITH t AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY customer_key, survey_type
                                        ORDER BY event_time DESC, event_id DESC) AS latest_rank
           FROM `${dataset}.customer_touchpoints_keyed`),
as_of AS (SELECT MAX(event_time) AS as_of FROM `${dataset}.customer_touchpoints`),
ids AS (
    SELECT customer_key, ARRAY_AGG(DISTINCT identifier ORDER BY identifier) AS identifiers
    FROM (SELECT customer_key, identifier FROM `${dataset}.identity_map`
          UNION DISTINCT SELECT customer_key, identifier FROM t)
    GROUP BY customer_key),
by_channel AS (
    SELECT customer_key,
           STRING_AGG(channel || '=' || CAST(n AS STRING), ', ' ORDER BY channel) AS channels
    FROM (SELECT customer_key, channel, COUNT(*) AS n FROM t GROUP BY 1, 2) GROUP BY 1),
by_touchpoint AS (
    SELECT customer_key,
           STRING_AGG(touchpoint || '=' || CAST(n AS STRING), ', ' ORDER BY touchpoint)
               AS touchpoints
    FROM (SELECT customer_key, touchpoint, COUNT(*) AS n FROM t GROUP BY 1, 2) GROUP BY 1),
complaints AS (
    SELECT t.customer_key, COUNT(*) AS open_complaints
    FROM t JOIN `${dataset}.brand_response_facts` f USING (event_id)
    WHERE f.label = 'negative' AND f.first_reply_time IS NULL GROUP BY 1),
agg AS (
    SELECT t.customer_key,
           COUNTIF(channel = 'social') AS social_events,
           COUNTIF(channel = 'web') AS web_events,
           COUNTIF(channel = 'survey') AS survey_responses,
           MIN(event_time) AS first_seen, MAX(event_time) AS last_seen,
           COUNT(DISTINCT order_id) AS orders,
           COALESCE(SUM(IF(touchpoint = 'web:order', order_value, NULL)), 0) AS revenue,
           MAX(IF(survey_type = 'NPS' AND latest_rank = 1, score, NULL)) AS nps_latest,
           AVG(IF(survey_type = 'NPS', score, NULL)) AS nps_avg,
           MAX(IF(survey_type = 'CSAT' AND latest_rank = 1, score, NULL)) AS csat_latest,
           AVG(IF(survey_type = 'CSAT', score, NULL)) AS csat_avg,
           MAX(IF(survey_type = 'CES' AND latest_rank = 1, score, NULL)) AS ces_latest,
           AVG(IF(survey_type = 'CES', score, NULL)) AS ces_avg,
           AVG(IF(event_time > TIMESTAMP_SUB(a.as_of, INTERVAL 7 DAY), polarity, NULL))
               AS sentiment_last_7d,
           AVG(IF(event_time <= TIMESTAMP_SUB(a.as_of, INTERVAL 7 DAY), polarity, NULL))
               AS sentiment_before,
           ANY_VALUE(a.as_of) AS as_of
    FROM t CROSS JOIN as_of a GROUP BY t.customer_key),
scored AS (
    SELECT agg.*, ids.identifiers, ARRAY_LENGTH(ids.identifiers) AS identifier_count,
           c.channels, p.touchpoints, COALESCE(o.open_complaints, 0) AS open_complaints,
           j.journey_phase,
           sentiment_last_7d - sentiment_before AS sentiment_trend,
           (UNIX_MILLIS(as_of) - UNIX_MILLIS(last_seen)) / 86400000.0 AS days_since_last_seen,
           GREATEST((UNIX_MILLIS(as_of) - UNIX_MILLIS(first_seen)) / (30 * 86400000.0), 1.0)
               AS months_observed
    FROM agg JOIN ids USING (customer_key)
    LEFT JOIN by_channel c USING (customer_key)
    LEFT JOIN by_touchpoint p USING (customer_key)
    LEFT JOIN complaints o USING (customer_key)
    LEFT JOIN `${dataset}.customer_journey` j
           ON j.customer_key = agg.customer_key AND j.brand = '(all)'),
risk AS (
    SELECT *, ROUND(LEAST(1.0,
               0.5 * LEAST(days_since_last_seen / 30.0, 1.0)
             + 0.2 * CASE WHEN nps_latest <= 6 THEN 1 ELSE 0 END
             + 0.15 * CASE WHEN open_complaints > 0 THEN 1 ELSE 0 END
             + 0.15 * CASE WHEN COALESCE(sentiment_trend, 0) < 0 THEN 1 ELSE 0 END), 3)
               AS churn_risk
    FROM scored)
SELECT customer_key, identifiers, identifier_count, channels, touchpoints,
       social_events, web_events, survey_responses, first_seen, last_seen, journey_phase,
       orders, revenue, nps_latest, nps_avg, csat_latest, csat_avg, ces_latest, ces_avg,
       sentiment_last_7d, sentiment_before, sentiment_trend, open_complaints,
       days_since_last_seen, churn_risk,
       CAST(ROUND(ROUND(CAST(0.3 * revenue / months_observed * LEAST(1 - churn_risk, 0.95)
                             / (1 + 0.01 - LEAST(1 - churn_risk, 0.95)) AS NUMERIC), 6), 2)
            AS FLOAT64) AS clv_estimate,
       as_of
FROM risk;

-- Churn-risk distribution per brand (see duckdb_views.sql for the bands).
CREATE OR REPLACE VIEW `${dataset}.kpi_churn_risk` AS
WITH by_brand AS (
    SELECT DISTINCT customer_key, brand FROM `${dataset}.customer_touchpoints_keyed`
    UNION ALL
    SELECT customer_key, '(all)' FROM `${dataset}.customer_360`),
banded AS (
    SELECT b.brand, c.churn_risk,
           CASE WHEN c.churn_risk < 0.25 THEN 1 WHEN c.churn_risk < 0.5 THEN 2
                WHEN c.churn_risk < 0.75 THEN 3 ELSE 4 END AS band_no
    FROM by_brand b JOIN `${dataset}.customer_360` c USING (customer_key))
SELECT brand,
       CASE band_no WHEN 1 THEN 'low' WHEN 2 THEN 'medium' WHEN 3 THEN 'high'
            ELSE 'critical' END AS risk_band,
       band_no,
       CASE band_no WHEN 1 THEN 0.0 WHEN 2 THEN 0.25 WHEN 3 THEN 0.5 ELSE 0.75 END AS band_from,
       CASE band_no WHEN 1 THEN 0.25 WHEN 2 THEN 0.5 WHEN 3 THEN 0.75 ELSE 1.0 END AS band_to,
       COUNT(*) AS customers,
       100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY brand) AS customers_pct,
       SUM(churn_risk) AS churn_risk_sum,
       AVG(churn_risk) AS mean_churn_risk,
       SUM(SUM(churn_risk)) OVER (PARTITION BY brand) / SUM(COUNT(*)) OVER (PARTITION BY brand)
           AS brand_mean_churn_risk
FROM banded GROUP BY brand, band_no;
