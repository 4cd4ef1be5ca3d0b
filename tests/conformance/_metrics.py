"""Scraping a metrics endpoint with a real HTTP client and parsing the Prometheus text format."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Sample values by (sample name, label set)."""


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback test URL
        body: bytes = response.read()
        return body.decode(), str(response.headers.get("Content-Type", ""))


async def scrape(url: str) -> tuple[Samples, str]:
    """GET ``url`` (in a thread: urllib blocks) and parse it; returns the samples and Content-Type."""
    text, content_type = await asyncio.to_thread(_get, url)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    """Every value the label ``label`` takes among the samples called ``name``."""
    return {dict(have)[label] for (n, have) in samples if n == name and label in dict(have)}
