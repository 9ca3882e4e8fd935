"""Classical (non-learned) controllers."""
