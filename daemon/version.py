"""Stoker's version: what `status` reports and what ACP peers see in clientInfo/agentInfo."""

VERSION = "0.1.0"
