//! Checkers (placeholder until the checker modules land).
