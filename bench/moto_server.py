"""moto's server for the SQS sender benchmark, without moto's cost per message already queued.

On every SendMessage (and every entry of a SendMessageBatch), moto 5.2 reads one attribute,
``queue.attributes.get("ContentBasedDeduplication")``, and building ``Queue.attributes`` counts
the queue's messages three times (visible, delayed, in flight): a send costs more the deeper
the queue, about 15 ms a message at a depth of 1,000 on this machine, whoever sends it. SQS has
no such cost, and a benchmark of senders on it measures moto's walk instead of the senders.
ReceiveMessage does the same for every message it returns (``MessageRetentionPeriod``), which
makes reading 10,000 messages back take many minutes.

Here the three counts read 0 while a send or a receive is being handled, and only then: what
those calls do is unchanged (the counts are not part of it), and every other call
(GetQueueAttributes included) sees the real counts. Nothing else of moto is touched. The tests
run plain moto.

Run as ``python bench/moto_server.py -H 127.0.0.1 -p PORT`` (moto.server's own arguments).
"""

from __future__ import annotations

import sys
import threading

from moto.server import main
from moto.sqs import models

_COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
)
_CALLS = ("send_message", "send_message_batch", "receive_message")

_in_call = threading.local()


def _zero_during_call(count: property) -> property:
    return property(lambda queue: 0 if getattr(_in_call, "depth", 0) else count.fget(queue))


def _flag_call(call):
    def flagged(*args, **kwargs):
        _in_call.depth = getattr(_in_call, "depth", 0) + 1
        try:
            return call(*args, **kwargs)
        finally:
            _in_call.depth -= 1

    return flagged


for _name in _COUNTS:
    setattr(models.Queue, _name, _zero_during_call(getattr(models.Queue, _name)))
for _name in _CALLS:
    setattr(models.SQSBackend, _name, _flag_call(getattr(models.SQSBackend, _name)))


if __name__ == "__main__":
    main(sys.argv[1:])
