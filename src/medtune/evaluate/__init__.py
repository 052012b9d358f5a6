"""Evaluation: lm-eval-exact multiple-choice log-likelihood scoring, perplexity, and metrics."""
