"""Memory for the world model: stores (what is remembered), readers (how a block reads it), and the memory
predictor that composes them (``predictor.memory.*``; presets in ``conf/predictor/``).

- ``base``: the contract (explicit per-sample state; retrieval stores and recurrent cells; the write rule);
- ``neural`` (NeuralMemory, Titans), ``lookup`` (LookupMemory), ``ssm`` (SSMMemory, SelectiveSSM, SelectiveSSD),
  ``mlstm`` (mLSTMMemory), ``segment`` (SegmentCache: Transformer-XL's keys/values, read by attention);
- ``readers``: context tokens (MAC), gate (MAG), cross-attention, adaptive norm, persistent tokens, additive actions;
- ``predictor``: MemoryPredictor.
"""
