"""Token caches: the bounded in-memory LRU, and the single-flight that lets one introspection serve many."""
