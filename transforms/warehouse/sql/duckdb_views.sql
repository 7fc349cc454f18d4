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

-- Web KPIs per window of the session start, brand and traffic source.
CREATE OR REPLACE VIEW kpi_web AS
SELECT time_bucket(to_seconds(w.window_seconds), s.session_start, TIMESTAMP '1970-01-01')
           AS window_start,
       time_bucket(to_seconds(w.window_seconds), s.session_start, TIMESTAMP '1970-01-01')
           + to_seconds(w.window_seconds) AS window_end,
       w.window_seconds, s.brand, coalesce(s.utm_source, '(direct)') AS utm_source,
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

-- The shop funnel per window of the session start and brand.
CREATE OR REPLACE VIEW kpi_funnel AS
SELECT time_bucket(to_seconds(w.window_seconds), s.session_start, TIMESTAMP '1970-01-01')
           AS window_start,
       w.window_seconds, s.brand,
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

-- What customers talk about: CX aspects by sentiment.
CREATE OR REPLACE VIEW kpi_aspects AS
SELECT window_start, window_end, window_seconds, source, brand, aspect,
       sum(mentions) AS mentions,
       sum(mentions) FILTER (WHERE label = 'negative') AS negative,
       sum(mentions) FILTER (WHERE label = 'positive') AS positive,
       100.0 * coalesce(sum(mentions) FILTER (WHERE label = 'negative'), 0) / sum(mentions)
           AS negative_share_pct
FROM aspect_mentions GROUP BY ALL;
