"""stream_app: streaming, real-time fraud scoring on Kafka with an online River model and an ONNX model.

Layout follows the flow: events (parse/validate) -> features (per-card state) -> models (River,
ONNX) -> decision (combine, decide, explain) -> scoring (the core) -> records (outputs); app.py
wires it into Faust, kafka/ holds the broker adapters, cli.py the command.
"""

__version__ = "0.1.0"
