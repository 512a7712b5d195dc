// Integration tests: see EndToEndTests.swift
