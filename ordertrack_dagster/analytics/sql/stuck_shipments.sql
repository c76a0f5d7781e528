-- Shipments still being tracked whose courier has shown no new scan for $stuck_days days, per
-- flow, longest-stuck first. A shipment's last scan is the newest courier event time in its
-- answers (its booking time if the courier never gave one). Still tracked: the tracking key was
-- selected on its flow's latest run day and its latest reported status is not final
-- (delivered, lost, destroy, booking_cancelled).
-- $stuck_days = 3  days without a new scan before a shipment counts as stuck
-- @cron 0 3 * * *
WITH latest_day AS (
    SELECT flow, max(run_date) AS run_date
    FROM status_updates
    GROUP BY flow
),
tracked AS (
    SELECT DISTINCT updates.flow, updates.tracking_key
    FROM status_updates AS updates
    JOIN latest_day USING (flow, run_date)
),
per_key AS (
    SELECT
        flow,
        tracking_key,
        arg_max(order_id, run_date) AS order_id,
        arg_max(status, event_time) FILTER (WHERE status IS NOT NULL) AS last_status,
        arg_max(courier_status, event_time) AS last_courier_status,
        coalesce(max(event_time), max(booked_at)) AS last_scan_at
    FROM status_updates
    GROUP BY flow, tracking_key
)
SELECT
    flow,
    tracking_key,
    order_id,
    last_status,
    last_courier_status,
    last_scan_at,
    round((epoch($as_of) - epoch(last_scan_at)) / 86400, 1) AS days_without_scan
FROM per_key
JOIN tracked USING (flow, tracking_key)
WHERE last_scan_at < $as_of - to_days($stuck_days)
  AND coalesce(last_status, '') NOT IN ('delivered', 'lost', 'destroy', 'booking_cancelled')
ORDER BY flow, last_scan_at, tracking_key
