REGRESSIONS: list[str] = []
