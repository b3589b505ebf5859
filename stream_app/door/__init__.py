"""``stream-app door``: ``POST /score`` in a process of its own, fed from the logs the workers write.

The worker answers ``/score`` on the event loop that also scores its stream, so a request waits behind the
stream's micro-batches (:mod:`benchmarks.score_door`). The door process answers the same question with the
same code (:mod:`stream_app.worker.http`) from replicas: the card states from the cards table's changelog, the
entity profiles from the ``scores`` topic, the online models from the examples log, the rules from the rules
topic. It never writes to Kafka, and it knows every card of the group, where a worker knows its partitions'.
"""
