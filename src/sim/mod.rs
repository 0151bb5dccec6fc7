//! Graph API simulator (placeholder).
