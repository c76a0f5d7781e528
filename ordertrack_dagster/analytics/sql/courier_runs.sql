-- One row per tracking run: how many keys were asked and how each ended (answered,
-- not_answered, failed, deferred), the most common error, the requests sent and retried, and
-- the request latency in milliseconds (p50, p99, max). Latency is counted once per request
-- (batch), not once per key; keys never sent (odd keys, batch -1) count only as failed.
WITH per_run AS (
    SELECT
        flow,
        run_id,
        min(run_date) AS run_date,
        min(fetched_at) AS started_at,
        count(*) AS keys,
        count(*) FILTER (WHERE state = 'answered') AS answered,
        count(*) FILTER (WHERE state = 'not_answered') AS not_answered,
        count(*) FILTER (WHERE state = 'failed') AS failed,
        count(*) FILTER (WHERE state = 'deferred') AS deferred
    FROM raw_courier_responses
    GROUP BY flow, run_id
),
errors AS (
    SELECT flow, run_id, error, count(*) AS keys
    FROM raw_courier_responses
    WHERE error IS NOT NULL
    GROUP BY flow, run_id, error
),
top_error AS (
    SELECT flow, run_id, first(error ORDER BY keys DESC, error) AS most_common_error
    FROM errors
    GROUP BY flow, run_id
),
requests AS (
    SELECT flow, run_id, batch, max(latency_ms) AS latency_ms, max(attempts) AS attempts
    FROM raw_courier_responses
    WHERE batch >= 0 AND latency_ms IS NOT NULL
    GROUP BY flow, run_id, batch
),
latency AS (
    SELECT
        flow,
        run_id,
        count(*) AS requests,
        sum(attempts - 1)::BIGINT AS retries,
        round(quantile_cont(latency_ms, 0.5), 1) AS latency_ms_p50,
        round(quantile_cont(latency_ms, 0.99), 1) AS latency_ms_p99,
        round(max(latency_ms), 1) AS latency_ms_max
    FROM requests
    GROUP BY flow, run_id
)
SELECT
    per_run.*,
    top_error.most_common_error,
    coalesce(latency.requests, 0) AS requests,
    coalesce(latency.retries, 0) AS retries,
    latency.latency_ms_p50,
    latency.latency_ms_p99,
    latency.latency_ms_max
FROM per_run
LEFT JOIN top_error USING (flow, run_id)
LEFT JOIN latency USING (flow, run_id)
ORDER BY started_at, flow, run_id
