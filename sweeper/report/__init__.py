"""The report: the decision between feature extraction and fine-tuning, with its evidence.

- build.py gathers the evidence (the study, the confirmation runs, the probe) into a `Report`;
- decision.py holds the rule and the statistics, as plain functions of numbers;
- model.py is the typed `Report`, and report.json's fixed schema (`Report.to_json`);
- render.py writes it as Markdown, HTML and text; plots.py draws the study; files.py writes them.
"""

from sweeper.report.build import DatasetFacts, build_report, describe_dataset, report_study
from sweeper.report.files import (
    ReportNotWritten,
    check_report_folder,
    spec_files,
    write_report,
    write_summary,
)
from sweeper.report.model import REPORT_KEYS, Report

__all__ = [
    "REPORT_KEYS",
    "DatasetFacts",
    "Report",
    "ReportNotWritten",
    "build_report",
    "check_report_folder",
    "describe_dataset",
    "report_study",
    "spec_files",
    "write_report",
    "write_summary",
]
