"""stream_app: streaming, real-time fraud scoring on Kafka with an online River model and an ONNX model.

The packages follow the flow: ``domain`` (parse and validate events, per-card features, scoring,
decisions, output records: pure, no Kafka), ``models`` (River, ONNX, stacker, registry, checkpoints),
``worker`` (the faust app: agents, the delivery protocol, HTTP, metrics), ``kafka`` (broker adapters
and the one module that touches framework internals), ``offline`` (batch scoring, training,
evaluation) and ``devtools`` (embedded broker, traffic generator, demo, fuzzers); ``cli`` calls them.
"""

__version__ = "0.1.0"
