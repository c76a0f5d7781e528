-- Status changes written to MongoDB per run day and flow: how many orders moved from each
-- status to each other (order_status_writes rows with action 'status_changed'). A from_status
-- that is a number is a non-canonical status id (booked, manifested, ...). Run days are UTC.
SELECT
    run_date,
    flow,
    from_status,
    to_status,
    count(*) AS orders
FROM order_status_writes
WHERE action = 'status_changed'
GROUP BY run_date, flow, from_status, to_status
ORDER BY run_date, flow, orders DESC, from_status, to_status
