"""Callbacks that update masks during model.fit."""
