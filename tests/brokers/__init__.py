"""Tests of the broker topologies a province runs (config/brokers/), with real brokers."""
