"""The package version, in a module of its own: the supervisor reads it without the
package's lazy names (which import-linter counts as imports of export and handlers)."""

__version__ = "0.1.0"
