"""The server side: the only round loop, its ledger, evaluation and checkpoints."""
