-- Shipments per courier flow and canonical status: each tracking key counted once, at the
-- latest status its courier reported in the window (status_updates; the newest courier event
-- time wins). Keys whose answers never mapped to a status are left out.
WITH latest AS (
    SELECT flow, tracking_key, arg_max(status, event_time) AS status
    FROM status_updates
    WHERE status IS NOT NULL AND event_time IS NOT NULL
    GROUP BY flow, tracking_key
)
SELECT
    flow,
    status,
    count(*) AS shipments,
    round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY flow), 1) AS share_pct
FROM latest
GROUP BY flow, status
ORDER BY flow, shipments DESC, status
