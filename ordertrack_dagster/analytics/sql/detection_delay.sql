-- Detection delay per hour of writing (UTC), flow and status reached: how late we learnt of
-- each status change, in seconds from the courier's time for it (its scan, the answer's
-- event_time) to our write to MongoDB (written_at), as p50, p95 and max. The row whose status
-- is '(all)' sums up the hour and flow. Only order_status_writes rows with action
-- 'status_changed' and a courier time count; a courier time after our write counts as 0. The
-- same figures as the detection_delay check of order_status_writes, over any stretch of time.
WITH changes AS (
    SELECT
        date_trunc('hour', written_at) AS hour,
        flow,
        to_status,
        greatest(0, epoch(written_at) - epoch(event_time)) AS seconds
    FROM order_status_writes
    WHERE action = 'status_changed' AND event_time IS NOT NULL AND written_at IS NOT NULL
)
SELECT
    hour,
    flow,
    coalesce(to_status, '(all)') AS status,
    count(*) AS changes,
    round(quantile_cont(seconds, 0.5), 1) AS p50_seconds,
    round(quantile_cont(seconds, 0.95), 1) AS p95_seconds,
    round(max(seconds), 1) AS max_seconds
FROM changes
GROUP BY GROUPING SETS ((hour, flow, to_status), (hour, flow))
ORDER BY hour, flow, status
