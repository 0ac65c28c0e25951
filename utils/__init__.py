"""The ground floor: small helpers that every other package stands on.

Errors (:mod:`utils.errors`), config-schema checks (:mod:`utils.schema`), JSON and atomic file
writes (:mod:`utils.fileio`), displacement-field shape checks and units (:mod:`utils.fields`),
device selection (:mod:`utils.device`), distributed helpers (:mod:`utils.distributed`) and the
shared command-line flags (:mod:`utils.cli`). Modules here import nothing of the project but
each other.
"""
