"""The shared data model of flatgigs: identifiers, scopes and the error tree. Depends on nothing above it."""
