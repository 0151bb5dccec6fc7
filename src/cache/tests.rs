//! Unit tests of the cache module: keys, rules, directives.

use super::*;
