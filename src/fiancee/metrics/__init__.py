"""Quality and cost metrics: pure functions and small modules with explicit input ranges."""
