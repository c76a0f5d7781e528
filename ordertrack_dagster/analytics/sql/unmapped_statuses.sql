-- Raw courier statuses that no mapping table knows (status_updates with outcome 'unmapped';
-- they were treated as "no change"), per flow: how many answers carried each, on how many
-- shipments, the first and last run day it was seen, and up to five example order ids.
-- Each one belongs in its courier's mapping table.
SELECT
    flow,
    courier_status,
    count(*) AS answers,
    count(DISTINCT tracking_key) AS shipments,
    min(run_date) AS first_seen,
    max(run_date) AS last_seen,
    array_to_string(list_sort(list_distinct(list(order_id)))[1:5], ', ') AS example_orders
FROM status_updates
WHERE outcome = 'unmapped'
GROUP BY flow, courier_status
ORDER BY answers DESC, flow, courier_status
