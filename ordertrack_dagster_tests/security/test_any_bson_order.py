"""Our own data, any shape: orders as production may hold them go through the drain, the
CRM webhook, Slack and the email like any other (a Decimal128 amount used to fail every
RTO webhook of its order until it became a dead letter)."""

import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from dagster import DagsterInstance

from ordertrack_dagster_tests.effects.support import Runner, metadata, webhooks_for
from ordertrack_dagster_tests.helpers import seed_orders


@pytest.mark.parametrize(
    ("fields", "order_value", "phone"),
    [
        ({"total_amt": Decimal128("1499.00")}, 1499, "9876543210"),
        ({"total_amt": Int64(2599), "customer": {"phone": Int64(9876500000)}}, 2599, "9876500000"),
        ({"total_amt": "1,299.50", "customer": None}, 1299.5, None),
        ({"total_amt": None, "customer": "walk-in"}, None, None),
    ],
)
def test_an_rto_of_any_bson_shape_reaches_the_crm(stack, stack_env, db, fields, order_value, phone):
    [order] = seed_orders(db, stack.simulator, "delhivery_b2c", ["rto_initiated"], **fields)
    with DagsterInstance.ephemeral() as instance:
        result = Runner(instance).run()
    assert result.success and metadata(result, "crm_rto_webhooks")["sent"] == 1
    [webhook] = webhooks_for(stack, [order.order_id])
    assert webhook["status"] == "accepted"
    assert (webhook["body"]["order_value"], webhook["body"]["phone_number"]) == (order_value, phone)
