$upn = [string]$p.user_principal_name
$existing = Find-StewardExUser -Identity $upn
$StewardPrior = [ordered]@{ existed = $false }
$shared = (Test-StewardValue 'shared') -and [bool]$p.shared
if ($null -ne $existing) {
    $kind = [string]$existing.RecipientTypeDetails
    if (($shared -and $kind -eq 'SharedMailbox') -or (-not $shared -and $kind -eq 'UserMailbox')) {
        $StewardPrior = [ordered]@{ existed = $true }
        return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardRecipient (Get-Recipient -Identity $upn)) -Prior $StewardPrior)
    }
    return (Out-StewardResult -Status 'failed' -Category 'already_exists' -Prior $StewardPrior -Reason ('New-Mailbox : ' + $upn + ' already exists (' + $kind + ').'))
}
$params = @{ Name = [string]$p.name; UserPrincipalName = $upn }
$optional = [ordered]@{ alias = 'Alias'; display_name = 'DisplayName'; first_name = 'FirstName'; last_name = 'LastName'; organizational_unit = 'OrganizationalUnit'; database = 'Database' }
foreach ($StewardField in $optional.Keys) {
    if (Test-StewardValue $StewardField) { $params[$optional[$StewardField]] = [string](Get-StewardValue $StewardField) }
}
if ($shared) {
    $null = New-Mailbox -Shared @params -Confirm:$false
} else {
    $null = New-Mailbox @params -Password (ConvertTo-SecureString -String ([string]$p.password) -AsPlainText -Force) -ResetPasswordOnNextLogon $true -Confirm:$false
}
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardRecipient (Get-Recipient -Identity $upn)) -Prior $StewardPrior)
