"""flagwire: real-time feature flags."""
