"""Weight averaging against forgetting: interpolation (WiSE-FT), model soups, heterogeneous averaging."""
