"""Tree search over LLM-scored actions (MCTS) and its rewards."""
