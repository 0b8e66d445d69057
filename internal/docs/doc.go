// Package docs holds no code: its test keeps the repository self-contained.
// Comments and documents cite the reference pages under docs/ at the
// repository root ("docs/opensrs.md §3"); the test fails when a tracked file
// points at a path outside the repository, cites a docs/ page that does not
// exist, or cites a section or anchor that page does not have.
package docs
