package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
)

// GenerateKey returns a fresh private key of the given type (ECDSA P-256 when
// kt is empty).
func GenerateKey(rand io.Reader, kt KeyType) (crypto.Signer, error) {
	switch kt {
	case "", KeyECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand)
	case KeyRSA2048:
		return rsa.GenerateKey(rand, 2048)
	case KeyRSA3072:
		return rsa.GenerateKey(rand, 3072)
	}
	return nil, fmt.Errorf("ca: unknown key type %q", kt)
}

// EncodeKey returns the PKCS#8 PEM of a private key. The result is secret.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ParseKeyPEM parses one PEM private key (PKCS#8, PKCS#1 or SEC 1). The error
// never contains key material.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("ca: no PEM block in private key data")
	}
	if len(pemBlocks(rest)) > 0 {
		return nil, errors.New("ca: more than one PEM block in private key data")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("ca: PEM block of type %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, errors.New("ca: private key does not parse") // the parser's error may quote bytes
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca: private key of type %T cannot sign", key)
	}
	switch k := signer.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("ca: RSA key of %d bits is too small", k.N.BitLen())
		}
	case *ecdsa.PrivateKey:
	default:
		return nil, fmt.Errorf("ca: private key of type %T is not supported", signer)
	}
	return signer, nil
}

// ParseCertsPEM parses every CERTIFICATE block; anything else is an error.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	blocks := pemBlocks(data)
	if len(blocks) == 0 {
		return nil, errors.New("ca: no PEM certificate found")
	}
	certs := make([]*x509.Certificate, 0, len(blocks))
	for i, b := range blocks {
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("ca: PEM block %d is %q, want CERTIFICATE", i+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca: certificate %d: %w", i+1, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

func pemBlocks(data []byte) []*pem.Block {
	var out []*pem.Block
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b)
	}
}

// publicKeysEqual reports whether a certificate's key is the signer's.
func publicKeysEqual(cert *x509.Certificate, key crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	return ok && pub.Equal(cert.PublicKey)
}
