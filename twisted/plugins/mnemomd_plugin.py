"""twistd plugin: ``twistd -n mnemomd``. Options and makeService live in mnemomd.cli.tap."""

from twisted.application.service import ServiceMaker

mnemomd = ServiceMaker("mnemomd", "mnemomd.cli.tap", "Mnemom integrity gateway", "mnemomd")
