"""Writes infra/template.yaml with AWS::LanguageExtensions expanded (Fn::ForEach, Fn::FindInMap
defaults), the way SAM CLI expands it before building, for the scanners that do not expand it
themselves (checkov skips Fn::ForEach blocks, so it would never see the per-instance secrets and
schedules). Runs in the aws-sam-cli venv: python expand-template.py TEMPLATE OUT INSTANCE,...
"""
import json
import sys

from samcli.lib.cfn_language_extensions.sam_integration import expand_language_extensions
from samcli.yamlhelper import yaml_parse

template_path, out_path, instances = sys.argv[1], sys.argv[2], sys.argv[3]
with open(template_path, encoding="utf-8") as f:
    template = yaml_parse(f.read())
result = expand_language_extensions(
    template,
    {"InstanceNames": instances, "AWS::StackName": "ci", "AWS::Region": "us-east-1",
     "AWS::AccountId": "123456789012", "AWS::Partition": "aws"},
    enabled=True,
)
expanded = result.expanded_template
transform = expanded.get("Transform")
if isinstance(transform, list):
    expanded["Transform"] = [t for t in transform if t != "AWS::LanguageExtensions"]
if any(k.startswith("Fn::ForEach") for k in expanded.get("Resources", {})):
    sys.exit("error: Fn::ForEach left in the expanded template")
with open(out_path, "w", encoding="utf-8") as f:
    json.dump(expanded, f, indent=1)
names = sorted(k for k in expanded["Resources"] if k.startswith(("Secret", "Schedule")))
print(f"expanded for {instances}: {', '.join(names)}")
