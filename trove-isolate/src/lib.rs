//! trove-isolate: placeholder
