from kubeca_client.client import Client


def test_service_lists_three_authorities(client: Client) -> None:
    names = sorted(ca.authority for ca in client.ca_certificates())
    assert names == ["etcd-ca", "front-proxy-ca", "kubernetes-ca"]
