"""The camera side of live audiences: ``moodlens edge`` (agent, outbox) and the batch format."""
