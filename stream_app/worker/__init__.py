"""The streaming worker: the faust app, its agents and the delivery protocol, HTTP, metrics, logs."""
