"""Recalculation by real spreadsheet engines (LibreOffice, Gnumeric), reading their results back and
comparing every formula cell with the engine."""
