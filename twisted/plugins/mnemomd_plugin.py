"""twistd plugin: ``twistd -n mnemomd``. Options and makeService live in mnemomd.tap."""

from twisted.application.service import ServiceMaker

mnemomd = ServiceMaker("mnemomd", "mnemomd.tap", "Mnemom integrity gateway", "mnemomd")
