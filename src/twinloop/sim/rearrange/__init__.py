"""Language-conditioned rearrangement (LLaRP's Language Rearrangement benchmark)."""
