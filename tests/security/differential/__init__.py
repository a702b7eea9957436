"""The differential tester: shell lines through the analysis and through bash
itself (docs/security.md, "The differential tester")."""
