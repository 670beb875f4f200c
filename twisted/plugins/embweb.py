from twisted.application.service import ServiceMaker

embweb = ServiceMaker("embweb", "boatwist.tap", "A web server for embedded devices with truthful presence.", "embweb")
