"""VAG-DPO training pieces: the loss (a pure function of log-probabilities), sequence
log-probabilities of a batch, and the preference pairs with their collator."""
