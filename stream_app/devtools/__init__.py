"""Development tools: the embedded broker, traffic generator and publisher, demo, fuzzers, worker processes."""
