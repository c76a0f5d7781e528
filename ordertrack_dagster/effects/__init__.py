"""Side effects of a flow run (contract §7): the outbox, Slack, the CRM, logs and the email.

What other concerns need of the effects is imported from here; every other module of this
package is internal to it. Each name below says who needs it and why.
"""

from ordertrack_dagster.effects.assets import EFFECT_ASSETS, TABLELESS_EFFECTS
from ordertrack_dagster.effects.crm import CrmResource
from ordertrack_dagster.effects.declarations import EFFECTS
from ordertrack_dagster.effects.delivery import DeliveryDeferred, DeliveryError
from ordertrack_dagster.effects.outbox import Outbox, dead_letter_filter, waiting_effects
from ordertrack_dagster.effects.senders import post_slack
from ordertrack_dagster.effects.settings import EffectsSettings
from ordertrack_dagster.effects.smtp import SmtpResource

__all__ = [
    # The sending assets, which `definitions.py` registers.
    "EFFECT_ASSETS",
    # The declared effects, whose kinds the operator's dead-letter job reports.
    "EFFECTS",
    # The sending assets the drain sensor runs without a source table.
    "TABLELESS_EFFECTS",
    # The CRM's resource, which `settings.py` builds from the environment.
    "CrmResource",
    # A delivery that may be retried: checks that post an alert report it, not fail on it.
    "DeliveryDeferred",
    # A delivery that failed for good: checks that post an alert report it, not fail on it.
    "DeliveryError",
    # Channels, recipients and retry policy: built by `settings.py`, read by alerts and jobs.
    "EffectsSettings",
    # The outbox the operator's dead-letter job requeues through.
    "Outbox",
    # The email's resource, which `settings.py` builds from the environment.
    "SmtpResource",
    # Which dead letters the operator's job selects, so it and the outbox agree.
    "dead_letter_filter",
    # How alerts reach Slack (retries, rate limits, redaction), for checks and sensors.
    "post_slack",
    # Why an effect still waits, which the drain sensor reads to start its run.
    "waiting_effects",
]
