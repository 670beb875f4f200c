"""
The bridge from one boatwist to an MQTT broker (Mosquitto): availability,
presence, the floor, controls and every event on retained and QoS 1 topics,
opt-in commands, Home Assistant discovery, and ``embweb-fleet`` to see a
plant's devices at once.

Kept light on purpose: L{boatwist.config} imports L{boatwist.mqtt.settings}
through here, so nothing heavy (paho, the reactor) is imported at this level.
The service is L{boatwist.mqtt.bridge.MqttBridgeService}; what the daemon
must give it is in L{boatwist.mqtt.interfaces}.
"""
