"""FHIR R4 for hospital systems: the lookup as a Patient operation, its refusals as
OperationOutcome, and the custodians' enquiries as AuditEvent. A translation of the
JSON API, never a second way to answer (docs/fhir/)."""
